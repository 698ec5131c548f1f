//! The Kafka API front door: a Kafka request in, the shard's services
//! called, a Kafka response out.
//!
//! Framing is the native protocol's (a 4-byte big-endian length), so the
//! connection machinery (admission, byte budgets, deadlines) is shared;
//! what differs is here: the header, the bounds check before decoding
//! (`protocol::kafka::bounds`), and the translation of each API onto the
//! same shard calls the native protocol makes. Responses are encoded at the
//! version asked for, and go out in request order (the connection orders
//! them, see `connection.rs`).
//!
//! Each shard can be advertised as a Kafka broker of its own
//! ([`KafkaMode::PerShard`]): node id = shard index, its own port, leader
//! of the partitions it owns, so clients send every produce and fetch
//! straight to the owning core. In [`KafkaMode::Node`] one broker is
//! advertised and shards forward, as the native shared port does.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, ProducerId, RequestHeader, ResponseHeader,
    ResponseKind, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::config::KafkaMode;
use crate::protocol::acl::Operation;
use crate::protocol::kafka::bounds::{self, BoundsError};
use crate::protocol::kafka::schemas;
use crate::protocol::types::{AckLevel, PartitionId};
use crate::protocol::wire::{self, ErrorCode, FetchPartition, ListOffsetsPartition, OffsetSpec};
use crate::shard::topic_config::TopicConfig;
use crate::shard::{Counters, ProduceItem, Shard};

use super::access::Access;
use super::kafka_codes::{codes, kafka_code};
use super::limits::Limits;
use super::{dispatch, kafka_acls, kafka_admin, kafka_group_acl};

/// Where Kafka clients reach the broker.
#[derive(Debug, Clone)]
pub struct KafkaEndpoints {
    pub mode: KafkaMode,
    pub host: String,
    /// The bootstrap port (advertised only in node mode).
    pub bootstrap_port: u16,
    /// Each shard's Kafka port, indexed by shard (per-shard mode).
    pub shard_ports: Vec<u16>,
    pub auto_create_topics: bool,
}

impl KafkaEndpoints {
    /// The advertised brokers: (node id, port).
    fn brokers(&self) -> Vec<(i32, u16)> {
        match self.mode {
            KafkaMode::PerShard => {
                self.shard_ports.iter().enumerate().map(|(shard, port)| (shard as i32, *port)).collect()
            }
            KafkaMode::Node => vec![(0, self.bootstrap_port)],
        }
    }

    /// The node that leads a partition owned by `shard`.
    fn node_of(&self, shard: u16) -> i32 {
        match self.mode {
            KafkaMode::PerShard => i32::from(shard),
            KafkaMode::Node => 0,
        }
    }

    fn port_of_node(&self, node: i32) -> u16 {
        self.brokers().into_iter().find(|(id, _)| *id == node).map_or(self.bootstrap_port, |(_, port)| port)
    }
}

/// What a Kafka request turned into.
#[derive(Debug)]
pub enum Outcome {
    /// A response frame (length prefix included).
    Respond(Vec<u8>),
    /// No response (produce with acks 0).
    Silent,
    /// Close the connection (unknown API, broken header).
    Close(String),
}

/// The header and body of a request frame, checked.
#[derive(Debug)]
pub struct Parsed {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub body: Bytes,
}

/// Why a Kafka request frame was not read.
#[derive(Debug, thiserror::Error)]
pub enum KafkaRequestError {
    #[error("a {0}-byte Kafka frame has no header")]
    NoHeader(usize),
    #[error("unknown Kafka API key {0}")]
    UnknownApiKey(i16),
    #[error("request header: {0}")]
    Header(#[source] BoundsError),
    #[error("not served")]
    NotServed,
    #[error("version not served")]
    VersionNotServed,
    #[error("{0}")]
    Bounds(#[source] BoundsError),
    #[error("{0}")]
    Decode(#[source] anyhow::Error),
}

/// Reads a request frame's header, and checks its body's bounds. An
/// unknown API key or a header that does not parse closes the connection
/// (there is no way to answer it in a form the client expects); a body
/// that does not fit its layout gets INVALID_REQUEST... as a closed
/// connection too, since the response layout depends on a request the
/// broker could not read.
pub fn parse(frame: Bytes) -> Result<Parsed, KafkaRequestError> {
    if frame.len() < 8 {
        return Err(KafkaRequestError::NoHeader(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(key).map_err(|()| KafkaRequestError::UnknownApiKey(key))?;
    let flexible_header = api_key.request_header_version(version) >= 2;
    let header_len = bounds::header_len(&frame, flexible_header).map_err(KafkaRequestError::Header)?;
    Ok(Parsed { api_key, version, correlation_id, body: frame.slice(header_len..) })
}

/// Serves one request.
///
/// `fetch_wait_ms`: for a Fetch, what is left of its long-poll after the
/// connection waited for data and reserved its response budget (see
/// [`fetch_to_reserve`]).
pub(crate) async fn handle(
    shard: &Rc<Shard>,
    endpoints: &KafkaEndpoints,
    limits: &Limits,
    request: Parsed,
    fetch_wait_ms: Option<u32>,
    access: &Access,
) -> Outcome {
    let Parsed { api_key, version, correlation_id, body } = request;
    let Some(schema) = served(api_key) else {
        return Outcome::Close(format!("Kafka API {api_key:?} is not served"));
    };
    if !(schema.min_version..=schema.max_version).contains(&version) {
        if api_key == ApiKey::ApiVersions {
            // Answered in v0 form, listing what is served, so the client can
            // pick a version it has.
            return respond(
                api_key,
                0,
                correlation_id,
                ResponseKind::ApiVersions(api_versions(codes::UNSUPPORTED_VERSION)),
            );
        }
        return Outcome::Close(format!("{api_key:?} v{version} is not served"));
    }
    if let Err(error) = bounds::check_body(schema, version, &body) {
        return Outcome::Close(format!("{api_key:?} v{version}: {error}"));
    }
    let response = match api_key {
        // Managing users depends on who asks, which only the connection knows.
        ApiKey::DescribeUserScramCredentials
        | ApiKey::AlterUserScramCredentials
        | ApiKey::DescribeAcls
        | ApiKey::CreateAcls
        | ApiKey::DeleteAcls => {
            Counters::add(&shard.counters().admin_requests, 1);
            security_request(shard, access, api_key, version, body).await.map(Some)
        }
        _ => serve(shard, endpoints, limits, access, (api_key, version, body), fetch_wait_ms).await,
    };
    let response = match response {
        Ok(Some(response)) => response,
        Ok(None) => return Outcome::Silent,
        Err(error) => return Outcome::Close(format!("{api_key:?} v{version}: {error}")),
    };
    respond(api_key, version, correlation_id, response)
}

/// Encodes the response to `request` (the login answers its SASL steps
/// itself).
pub(crate) fn answer(request: &Parsed, response: ResponseKind) -> Outcome {
    respond(request.api_key, request.version, request.correlation_id, response)
}

/// Encodes a response frame: length, header (at the API's header version),
/// body at `version`.
fn respond(api_key: ApiKey, version: i16, correlation_id: i32, response: ResponseKind) -> Outcome {
    // Straight into the frame that is written: the records of a fetch are
    // copied once, from the log's read into this buffer.
    let records: usize = match &response {
        ResponseKind::Fetch(fetch) => fetch
            .responses
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.records.as_ref().map_or(0, Bytes::len))
            .sum(),
        _ => 0,
    };
    // Room for the records of a fetch and the fields around them, so the
    // buffer is not grown (and copied) while they are encoded.
    let mut out = BytesMut::with_capacity(records + 1024);
    out.extend_from_slice(&[0; 4]);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut out, api_key.response_header_version(version))
        .and_then(|()| response.encode(&mut out, version));
    if let Err(error) = encoded {
        tracing::error!(?api_key, version, %error, "encoding a Kafka response");
        return Outcome::Close(format!("could not encode the {api_key:?} response: {error}"));
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Outcome::Respond(Vec::from(out))
}

/// A request body decoded by the crate (after the bounds check).
fn decode<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, BoundsError> {
    T::decode(&mut body, version).map_err(|_| BoundsError::Truncated { at: 0 })
}

async fn serve(
    shard: &Rc<Shard>,
    endpoints: &KafkaEndpoints,
    limits: &Limits,
    access: &Access,
    (api_key, version, body): (ApiKey, i16, Bytes),
    fetch_wait_ms: Option<u32>,
) -> Result<Option<ResponseKind>, BoundsError> {
    let counters = shard.counters();
    let counter = match api_key {
        ApiKey::Produce => &counters.produce_requests,
        ApiKey::Fetch => &counters.fetch_requests,
        ApiKey::Metadata => &counters.metadata_requests,
        ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::DescribeConfigs
        | ApiKey::AlterConfigs
        | ApiKey::IncrementalAlterConfigs
        | ApiKey::DeleteRecords => &counters.admin_requests,
        ApiKey::ApiVersions
        | ApiKey::ListOffsets
        | ApiKey::FindCoordinator
        | ApiKey::InitProducerId
        | ApiKey::SaslHandshake
        | ApiKey::SaslAuthenticate => &counters.other_requests,
        _ => &counters.group_requests,
    };
    Counters::add(counter, 1);
    let response = match api_key {
        ApiKey::ApiVersions => {
            let _: ApiVersionsRequest = decode(body, version)?;
            ResponseKind::ApiVersions(api_versions(codes::NONE))
        }
        ApiKey::Metadata => {
            ResponseKind::Metadata(metadata(shard, endpoints, access, version, decode(body, version)?).await)
        }
        ApiKey::Produce => {
            let request: ProduceRequest = decode(body, version)?;
            let response = produce(shard, endpoints, limits, access, request).await;
            return Ok(response.map(ResponseKind::Produce));
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode(body, version)?;
            let (mut native, shape) =
                native_fetch(&request, limits, |topic| access.topic(shard, Operation::Read, topic));
            if let Some(wait_ms) = fetch_wait_ms {
                native.max_wait_ms = native.max_wait_ms.min(wait_ms);
            }
            let mut response = fetch(shard, version, native, shape).await;
            let fetched: usize = response
                .responses
                .iter()
                .flat_map(|topic| &topic.partitions)
                .map(|partition| partition.records.as_ref().map_or(0, Bytes::len))
                .sum();
            let throttle = access.fetch_throttle(fetched as u64);
            if !throttle.is_zero() {
                // Kafka's answer to a quota: the client is told how long it
                // was held back, and the answer comes that much later.
                response.throttle_time_ms = i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX);
                glommio::timer::sleep(throttle).await;
            }
            ResponseKind::Fetch(response)
        }
        ApiKey::ListOffsets => {
            ResponseKind::ListOffsets(list_offsets(shard, access, version, decode(body, version)?).await)
        }
        ApiKey::CreateTopics => {
            ResponseKind::CreateTopics(kafka_admin::create_topics(shard, access, version, decode(body, version)?).await)
        }
        ApiKey::DeleteTopics => {
            ResponseKind::DeleteTopics(kafka_admin::delete_topics(shard, access, decode(body, version)?).await)
        }
        ApiKey::DescribeConfigs => {
            ResponseKind::DescribeConfigs(kafka_admin::describe_configs(shard, access, version, decode(body, version)?))
        }
        ApiKey::AlterConfigs => {
            ResponseKind::AlterConfigs(kafka_admin::alter_configs(shard, access, decode(body, version)?).await)
        }
        ApiKey::IncrementalAlterConfigs => ResponseKind::IncrementalAlterConfigs(
            kafka_admin::incremental_alter_configs(shard, access, decode(body, version)?).await,
        ),
        ApiKey::DeleteRecords => {
            ResponseKind::DeleteRecords(kafka_admin::delete_records(shard, access, decode(body, version)?).await)
        }
        ApiKey::FindCoordinator => {
            let request: FindCoordinatorRequest = decode(body, version)?;
            ResponseKind::FindCoordinator(find_coordinator(shard, endpoints, access, version, request))
        }
        ApiKey::InitProducerId => {
            ResponseKind::InitProducerId(init_producer_id(shard, access, decode(body, version)?).await)
        }
        // On a connection that is logged in, or needs no login: the
        // exchange is over (or never started).
        ApiKey::SaslHandshake => {
            let _: SaslHandshakeRequest = decode(body, version)?;
            ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_error_code(codes::ILLEGAL_SASL_STATE))
        }
        ApiKey::SaslAuthenticate => {
            let _: SaslAuthenticateRequest = decode(body, version)?;
            ResponseKind::SaslAuthenticate(
                SaslAuthenticateResponse::default().with_error_code(codes::ILLEGAL_SASL_STATE),
            )
        }
        group_api => {
            let gate = kafka_group_acl::gate(shard, access, group_api, version, &body);
            let body = match &gate {
                kafka_group_acl::GroupGate::Answer(refused) => return Ok(Some((**refused).clone())),
                kafka_group_acl::GroupGate::WithoutGroups(body, _)
                | kafka_group_acl::GroupGate::WithoutTopics(body, _) => body.clone(),
                _ => body,
            };
            match shard.kafka_group_request(group_api, version, body).await {
                Ok(response) => kafka_group_acl::finish(shard, access, gate, response),
                Err(error) => {
                    tracing::debug!(%error, "a Kafka group request failed");
                    return Err(BoundsError::Truncated { at: 0 });
                }
            }
        }
    };
    Ok(Some(response))
}

/// Users and ACLs: Describe on the cluster to read them, Alter to change.
async fn security_request(
    shard: &Rc<Shard>,
    access: &Access,
    api_key: ApiKey,
    version: i16,
    body: Bytes,
) -> Result<ResponseKind, BoundsError> {
    let (describe, alter) = (access.cluster(shard, Operation::Describe), access.cluster(shard, Operation::Alter));
    Ok(match api_key {
        ApiKey::DescribeUserScramCredentials => ResponseKind::DescribeUserScramCredentials(
            kafka_admin::describe_user_scram_credentials(shard, describe, decode(body, version)?),
        ),
        ApiKey::AlterUserScramCredentials => ResponseKind::AlterUserScramCredentials(
            kafka_admin::alter_user_scram_credentials(shard, alter, decode(body, version)?).await,
        ),
        ApiKey::DescribeAcls => {
            ResponseKind::DescribeAcls(kafka_acls::describe_acls(shard, access, decode(body, version)?))
        }
        ApiKey::CreateAcls => {
            ResponseKind::CreateAcls(kafka_acls::create_acls(shard, access, decode(body, version)?).await)
        }
        _ => ResponseKind::DeleteAcls(kafka_acls::delete_acls(shard, access, decode(body, version)?).await),
    })
}

fn served(api_key: ApiKey) -> Option<&'static bounds::RequestSchema> {
    schemas::schema(api_key as i16)
}

/// Produce's lowest version as advertised. Produce v0-v2 are not served
/// (they carry the old message formats), but librdkafka compresses with
/// gzip, snappy or lz4 only if the broker's Produce range reaches down to
/// v0 (librdkafka issue 4956; kcat 1.7 and librdkafka before 2.10 still do
/// this). Kafka 4.0 advertises v0 for the same reason (KAFKA-18659) and
/// refuses the old versions when they are used, as this broker does: the
/// request fails its version check and the connection is closed. Clients
/// pick the highest version both sides speak, so none uses them.
const PRODUCE_ADVERTISED_MIN_VERSION: i16 = 0;

/// The API version table, from the request layouts the broker checks.
fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let api_keys = schemas::SCHEMAS
        .iter()
        .filter(|schema| ApiKey::try_from(schema.api_key).is_ok_and(|key| served(key).is_some()))
        .map(|schema| {
            let min_version = if schema.api_key == ApiKey::Produce as i16 {
                PRODUCE_ADVERTISED_MIN_VERSION
            } else {
                schema.min_version
            };
            ApiVersion::default()
                .with_api_key(schema.api_key)
                .with_min_version(min_version)
                .with_max_version(schema.max_version)
        })
        .collect();
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(api_keys)
}

fn name(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// Creates `topic` with the default partition count if it does not exist
/// and auto-creation is on; true if it exists afterwards.
async fn ensure_topic(
    shard: &Rc<Shard>,
    endpoints: &KafkaEndpoints,
    access: &Access,
    topic: &str,
    allowed: bool,
) -> bool {
    if shard.metadata().topics.contains_key(topic) {
        return true;
    }
    if !(endpoints.auto_create_topics && allowed && access.may_create_topic(shard, topic)) {
        return false;
    }
    let created = shard.create_topic(topic.to_string(), 0, TopicConfig::default()).await;
    created.error.is_ok() || created.error == ErrorCode::TOPIC_EXISTS
}

async fn metadata(
    shard: &Rc<Shard>,
    endpoints: &KafkaEndpoints,
    access: &Access,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let describable = |topic: &str| access.topic(shard, Operation::Describe, topic);
    let names: Option<Vec<String>> = match request.topics {
        // v0: an empty list means every topic.
        Some(topics) if !(version == 0 && topics.is_empty()) => {
            Some(topics.into_iter().filter_map(|topic| topic.name.map(|name| name.0.to_string())).collect())
        }
        _ => None,
    };
    let allow_create = version < 4 || request.allow_auto_topic_creation;
    if let Some(names) = &names {
        for topic in names.iter().filter(|topic| describable(topic)) {
            ensure_topic(shard, endpoints, access, topic, allow_create).await;
        }
    }
    let metadata = shard.metadata();
    let brokers = endpoints
        .brokers()
        .into_iter()
        .map(|(node, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(node))
                .with_host(name(&endpoints.host))
                .with_port(i32::from(port))
        })
        .collect();
    // Listing every topic shows only those the principal may describe; a
    // topic asked for by name is answered TOPIC_AUTHORIZATION_FAILED.
    let names = names.unwrap_or_else(|| metadata.topics.keys().filter(|topic| describable(topic)).cloned().collect());
    let topics = names
        .iter()
        .map(|topic| {
            let mut entry = MetadataResponseTopic::default().with_name(Some(TopicName(name(topic))));
            if !describable(topic) {
                return entry.with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
            }
            match metadata.topics.get(topic) {
                Some(placement) => {
                    let partitions = placement
                        .owners
                        .iter()
                        .enumerate()
                        .map(|(index, owner)| {
                            let leader = BrokerId(endpoints.node_of(owner.0));
                            let mut partition = MetadataResponsePartition::default()
                                .with_partition_index(index as i32)
                                .with_leader_id(leader)
                                .with_replica_nodes(vec![leader])
                                .with_isr_nodes(vec![leader]);
                            if version >= 7 {
                                partition = partition.with_leader_epoch(0);
                            }
                            partition
                        })
                        .collect();
                    entry = entry.with_partitions(partitions);
                }
                None => entry = entry.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION),
            }
            entry
        })
        .collect();
    let mut response = MetadataResponse::default().with_brokers(brokers).with_topics(topics);
    if version >= 1 {
        response = response.with_controller_id(BrokerId(endpoints.node_of(0)));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(name("ringbroker")));
    }
    response
}

async fn produce(
    shard: &Rc<Shard>,
    endpoints: &KafkaEndpoints,
    limits: &Limits,
    access: &Access,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    let acks = match request.acks {
        0 => AckLevel::None,
        1 => AckLevel::Written,
        _ => AckLevel::Durable,
    };
    // (topic index, partition index, item) for what goes to the log;
    // errors found here are answered without it.
    let mut answers: Vec<(String, Vec<PartitionProduceResponse>)> = Vec::with_capacity(request.topic_data.len());
    let mut items = Vec::new();
    let mut places = Vec::new();
    for (topic_index, topic) in request.topic_data.into_iter().enumerate() {
        // The decoded name shares the frame's memory: let it go, so that a
        // batch can keep that memory without a copy (see `writable`).
        let TopicProduceData { name, partition_data, .. } = topic;
        let topic_name = name.0.to_string();
        drop(name);
        let writable_topic = access.topic(shard, Operation::Write, &topic_name);
        let exists = writable_topic && ensure_topic(shard, endpoints, access, &topic_name, true).await;
        let mut partitions = Vec::with_capacity(partition_data.len());
        for (partition_index, data) in partition_data.into_iter().enumerate() {
            let mut answer = PartitionProduceResponse::default().with_index(data.index);
            let records = data.records.unwrap_or_default();
            if !writable_topic {
                answer = answer.with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
            } else if !exists || data.index < 0 {
                answer = answer.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
            } else if records.len() > 16 && records[16] != 2 {
                // Message formats before RecordBatch v2 are not stored.
                answer = answer.with_error_code(codes::UNSUPPORTED_VERSION);
            } else {
                let partition = PartitionId(data.index as u32);
                items.push(ProduceItem { topic: topic_name.clone(), partition, data: writable(records) });
                places.push((topic_index, partition_index));
            }
            partitions.push(answer);
        }
        answers.push((topic_name, partitions));
    }
    let timeout_ms = u32::try_from(request.timeout_ms.max(0)).unwrap_or(0).min(dispatch::inner_deadline_ms(limits));
    let started = Instant::now();
    let produced: usize = items.iter().map(|item| item.data.len()).sum();
    let results = if items.is_empty() { Vec::new() } else { shard.produce(acks, timeout_ms, items).await };
    let throttle = access.produce_throttle(produced as u64);
    if !throttle.is_zero() {
        glommio::timer::sleep(throttle).await;
    }
    if acks == AckLevel::None {
        return None;
    }
    shard.counters().record_produce(started.elapsed());
    for ((topic_index, partition_index), result) in places.into_iter().zip(results) {
        let answer = &mut answers[topic_index].1[partition_index];
        answer.error_code = kafka_code(result.error);
        if result.error.is_ok() {
            answer.base_offset = result.base_offset.to_wire();
        } else {
            answer.base_offset = -1;
        }
    }
    let responses = answers
        .into_iter()
        .map(|(topic, partitions)| {
            TopicProduceResponse::default().with_name(TopicName(name(&topic))).with_partition_responses(partitions)
        })
        .collect();
    Some(
        ProduceResponse::default()
            .with_responses(responses)
            .with_throttle_time_ms(i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX)),
    )
}

/// A produced batch as the buffer the log appends (it rewrites the base
/// offset in place). When the request's frame holds nothing else still in
/// use, the batch keeps the frame's memory (the usual one-partition
/// request costs no copy); else it gets a buffer of its own, so a batch
/// kept in a log's tail cache never pins a larger frame.
fn writable(records: Bytes) -> BytesMut {
    records.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

/// Each fetched topic's name, whether it may be read, and the partitions
/// asked for, in request order: the shape the response is built in.
type FetchShape = Vec<(String, bool, Vec<i32>)>;

/// A Kafka fetch as the shard's fetch, its waits and sizes capped by the
/// broker's limits, and the shape of its answer.
fn native_fetch(
    request: &FetchRequest,
    limits: &Limits,
    readable: impl Fn(&str) -> bool,
) -> (wire::FetchRequest, FetchShape) {
    let mut partitions = Vec::new();
    let mut shape: FetchShape = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let topic_name = topic.topic.0.to_string();
        let mut indexes = Vec::with_capacity(topic.partitions.len());
        let allowed = readable(&topic_name);
        for partition in &topic.partitions {
            indexes.push(partition.partition);
            if !allowed {
                continue;
            }
            partitions.push(FetchPartition {
                topic: topic_name.clone(),
                partition: PartitionId(u32::try_from(partition.partition).unwrap_or(u32::MAX)),
                offset: crate::protocol::types::Offset::from_wire(partition.fetch_offset.max(0))
                    .unwrap_or(crate::protocol::types::Offset::ZERO),
                max_bytes: u32::try_from(partition.partition_max_bytes.max(0)).unwrap_or(0),
            });
        }
        shape.push((topic_name, allowed, indexes));
    }
    let max_bytes = u32::try_from(request.max_bytes.max(0))
        .unwrap_or(0)
        .min(u32::try_from(dispatch::fetch_bytes_max(limits)).unwrap_or(u32::MAX));
    let native = wire::FetchRequest {
        max_wait_ms: u32::try_from(request.max_wait_ms.max(0)).unwrap_or(0).min(dispatch::inner_deadline_ms(limits)),
        min_bytes: u32::try_from(request.min_bytes.max(0)).unwrap_or(0),
        max_bytes,
        partitions,
    };
    (native, shape)
}

/// For a Fetch request the broker serves: what it asks for, as the shard's
/// fetch, so the connection can wait for data and reserve the response's
/// bytes before it is served, as it does for native fetches. `None` for
/// anything else (and for a fetch that `handle` will refuse).
pub fn fetch_to_reserve(request: &Parsed, limits: &Limits) -> Option<wire::FetchRequest> {
    if request.api_key != ApiKey::Fetch {
        return None;
    }
    let schema = served(ApiKey::Fetch)?;
    if !(schema.min_version..=schema.max_version).contains(&request.version) {
        return None;
    }
    bounds::check_body(schema, request.version, &request.body).ok()?;
    let fetch: FetchRequest = decode(request.body.clone(), request.version).ok()?;
    // What the principal may not read is left out when the fetch is served;
    // waiting on it here reveals nothing.
    Some(native_fetch(&fetch, limits, |_| true).0)
}

async fn fetch(shard: &Rc<Shard>, version: i16, native: wire::FetchRequest, shape: FetchShape) -> FetchResponse {
    let outcome = shard.fetch(native).await;
    let mut payload = outcome.payload;
    let mut results = outcome.results.into_iter();
    let responses = shape
        .into_iter()
        .map(|(topic, allowed, indexes)| {
            let partitions = indexes
                .into_iter()
                .map(|index| {
                    if !allowed {
                        return PartitionData::default()
                            .with_partition_index(index)
                            .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
                    }
                    let Some(result) = results.next() else {
                        return PartitionData::default()
                            .with_partition_index(index)
                            .with_error_code(codes::UNKNOWN_SERVER_ERROR);
                    };
                    // The records field is one buffer: a partition's cached
                    // batches are gathered (one copy) unless there is one
                    // piece; the crate's encoder then copies them into the
                    // response.
                    let records = payload.split_to(result.bytes as usize).contiguous();
                    let high_watermark = result.high_watermark.to_wire();
                    let mut data = PartitionData::default()
                        .with_partition_index(index)
                        .with_error_code(kafka_code(result.error))
                        .with_high_watermark(high_watermark)
                        .with_last_stable_offset(high_watermark)
                        .with_records(Some(records));
                    if version >= 5 {
                        data = data.with_log_start_offset(result.log_start.to_wire());
                    }
                    data
                })
                .collect();
            FetchableTopicResponse::default().with_topic(TopicName(name(&topic))).with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}

async fn list_offsets(
    shard: &Rc<Shard>,
    access: &Access,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut asked = Vec::new();
    let mut shape: Vec<(String, bool, Vec<i32>)> = Vec::new();
    for topic in request.topics {
        let topic_name = topic.name.0.to_string();
        let allowed = access.topic(shard, Operation::Describe, &topic_name);
        let mut indexes = Vec::new();
        for partition in topic.partitions {
            indexes.push(partition.partition_index);
            if !allowed {
                continue;
            }
            let spec = match partition.timestamp {
                -1 => OffsetSpec::Latest,
                -2 => OffsetSpec::Earliest,
                time => OffsetSpec::Timestamp(time),
            };
            asked.push(ListOffsetsPartition {
                topic: topic_name.clone(),
                partition: PartitionId(u32::try_from(partition.partition_index).unwrap_or(u32::MAX)),
                spec,
            });
        }
        shape.push((topic_name, allowed, indexes));
    }
    let mut answers = shard.list_offsets(asked).await.into_iter();
    let topics = shape
        .into_iter()
        .map(|(topic, allowed, indexes)| {
            let partitions = indexes
                .into_iter()
                .map(|index| {
                    let answer = if allowed { answers.next() } else { None };
                    let (error, offset) = match answer {
                        None if !allowed => (codes::TOPIC_AUTHORIZATION_FAILED, -1),
                        Some(answer) => (kafka_code(answer.error), answer.offset.map_or(-1, |offset| offset.to_wire())),
                        None => (codes::UNKNOWN_SERVER_ERROR, -1),
                    };
                    let mut partition = ListOffsetsPartitionResponse::default()
                        .with_partition_index(index)
                        .with_error_code(error)
                        .with_offset(offset)
                        .with_timestamp(-1);
                    if version >= 4 {
                        partition = partition.with_leader_epoch(0);
                    }
                    partition
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(TopicName(name(&topic))).with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// InitProducerId for idempotent producers: a new producer id at epoch 0
/// (from the shard's own durable id space), or, for a producer naming its
/// id and epoch (v3+, after an error it could not resolve otherwise), the
/// same id at the next epoch, which fences its older incarnation. Partition
/// logs then store each of its batches once (see `storage::producers`).
/// Transactional ids are not served: there are no transactions.
async fn init_producer_id(
    shard: &Rc<Shard>,
    access: &Access,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let answer = |producer_id: i64, epoch: i16, code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
    };
    match request.transactional_id.as_ref().map(|id| id.0.is_empty()) {
        None => {}
        // Kafka's answer to an empty transactional id.
        Some(true) => return answer(-1, -1, codes::INVALID_REQUEST),
        Some(false) => return answer(-1, -1, codes::COORDINATOR_NOT_AVAILABLE),
    }
    if !access.may_get_producer_id(shard) {
        return answer(-1, -1, codes::CLUSTER_AUTHORIZATION_FAILED);
    }
    if request.producer_id.0 >= 0 && (0..i16::MAX).contains(&request.producer_epoch) {
        return answer(request.producer_id.0, request.producer_epoch + 1, codes::NONE);
    }
    match shard.new_producer_id().await {
        Ok(producer_id) => answer(producer_id, 0, codes::NONE),
        Err(error) => {
            tracing::warn!(%error, "no producer id could be reserved");
            answer(-1, -1, codes::COORDINATOR_NOT_AVAILABLE)
        }
    }
}

fn find_coordinator(
    shard: &Rc<Shard>,
    endpoints: &KafkaEndpoints,
    access: &Access,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let locate = |key: &str| -> (i32, u16, i16) {
        if !access.group(shard, Operation::Describe, key) {
            return (-1, 0, codes::GROUP_AUTHORIZATION_FAILED);
        }
        let coordinator = wire::coordinator_of(key, shard.shard_count());
        let node = endpoints.node_of(coordinator.0);
        (node, endpoints.port_of_node(node), codes::NONE)
    };
    let transactional = request.key_type != 0;
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (node, port, code) = locate(key.as_str());
                let code = if transactional { codes::COORDINATOR_NOT_AVAILABLE } else { code };
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node))
                    .with_host(name(&endpoints.host))
                    .with_port(i32::from(port))
                    .with_error_code(code)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    if transactional {
        return FindCoordinatorResponse::default()
            .with_error_code(codes::COORDINATOR_NOT_AVAILABLE)
            .with_node_id(BrokerId(-1));
    }
    let (node, port, code) = locate(request.key.as_str());
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(node))
        .with_host(name(&endpoints.host))
        .with_port(i32::from(port))
}

/// Everything the broker does to a request frame before serving it: the
/// header, the served-version check, the bounds check and the decode. For
/// fuzzing and property tests: whatever the bytes, an error or a request,
/// never a panic or an allocation the frame does not bound.
pub fn decode_request(
    frame: Bytes,
) -> Result<(RequestHeader, kafka_protocol::messages::RequestKind), KafkaRequestError> {
    let parsed = parse(frame.clone())?;
    let schema = served(parsed.api_key).ok_or(KafkaRequestError::NotServed)?;
    if !(schema.min_version..=schema.max_version).contains(&parsed.version) {
        return Err(KafkaRequestError::VersionNotServed);
    }
    bounds::check_body(schema, parsed.version, &parsed.body).map_err(KafkaRequestError::Bounds)?;
    let mut header_bytes = frame;
    let header = kafka_protocol::protocol::decode_request_header_from_buffer(&mut header_bytes)
        .map_err(KafkaRequestError::Decode)?;
    let mut body = parsed.body;
    let request = kafka_protocol::messages::RequestKind::decode(parsed.api_key, &mut body, parsed.version)
        .map_err(KafkaRequestError::Decode)?;
    Ok((header, request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bodies behind every served API and version: the checks
        /// and the crate's decode return, never panic, never abort on a
        /// huge allocation (an impossible count is refused before it).
        #[test]
        fn any_request_bytes_decode_or_fail_cleanly(
            schema_index in 0usize..schemas::SCHEMAS.len(),
            version_offset in 0i16..20,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let schema = &schemas::SCHEMAS[schema_index];
            let version = schema.min_version + version_offset % (schema.max_version - schema.min_version + 1);
            let mut frame = Vec::new();
            frame.extend_from_slice(&schema.api_key.to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&1i32.to_be_bytes());
            frame.extend_from_slice(&[0xff, 0xff]);
            if ApiKey::try_from(schema.api_key).is_ok_and(|key| key.request_header_version(version) >= 2) {
                frame.push(0);
            }
            frame.extend_from_slice(&body);
            let _ = decode_request(Bytes::from(frame));
        }

        #[test]
        fn any_frame_bytes_decode_or_fail_cleanly(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(frame));
        }
    }
}
