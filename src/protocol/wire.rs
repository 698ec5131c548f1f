//! The native wire protocol: frames, requests, responses and error codes.
//!
//! Every message is one frame (byte layout in `docs/protocol.md`):
//!
//! ```text
//! 0   u32  frame length: bytes after this field (checked before allocating)
//! 4   u8   protocol version (1)
//! 5   u8   kind: 0 request, 1 response, 2 notice
//! 6   u16  flags (reserved, 0)
//! 8   u32  request id, echoed by the response (many requests in flight)
//! 12  u32  header length
//! 16  ...  header: a postcard-encoded Request or Response
//! ..  ...  payload: raw record batches (produce, fetch), never re-encoded
//! ```
//!
//! All integers in the frame head are big-endian. Headers use postcard,
//! whose enum tags are variant positions: variants and fields are only ever
//! appended, never reordered or removed. Error codes are never reused.
//! Decoding never panics and never allocates from a length it has not
//! checked against the bytes actually present.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::types::{AckLevel, Offset, PartitionId, ShardId};

pub const PROTOCOL_VERSION: u8 = 1;
/// The length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Version, kind, flags, request id, header length.
pub const FRAME_HEAD_BYTES: usize = 12;
/// Largest header accepted; headers describe data, they never carry it.
pub const HEADER_BYTES_MAX: usize = 1 << 20;

/// Whether a frame carries a request, a response, or a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Request,
    Response,
    /// From the broker, tied to no request (its request id is 0): a
    /// `Response::Error` saying why the broker is about to close the
    /// connection (refused at admission, evicted while idle).
    Notice,
}

impl FrameKind {
    fn byte(self) -> u8 {
        match self {
            FrameKind::Request => 0,
            FrameKind::Response => 1,
            FrameKind::Notice => 2,
        }
    }
}

/// The fixed part of a frame after its length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: FrameKind,
    pub request_id: u32,
    pub header_len: usize,
}

/// What can be wrong with bytes received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than its {FRAME_HEAD_BYTES}-byte head")]
    FrameTooShort { len: usize },
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("header of {len} bytes does not fit the frame ({available} bytes) or the {HEADER_BYTES_MAX}-byte limit")]
    BadHeaderLength { len: usize, available: usize },
    #[error("malformed header: {0}")]
    Header(String),
    #[error("payload of {available} bytes does not match the {declared} bytes the header declares")]
    PayloadMismatch { declared: usize, available: usize },
}

/// Reads the length prefix and checks it against the limit, before anything
/// is allocated for the frame.
pub fn frame_len(prefix: [u8; FRAME_PREFIX_BYTES], max_frame_bytes: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_bytes {
        return Err(WireError::FrameTooLarge { len, max: max_frame_bytes });
    }
    if len < FRAME_HEAD_BYTES {
        return Err(WireError::FrameTooShort { len });
    }
    Ok(len)
}

/// Splits a frame body (everything after the length prefix) into its head,
/// header bytes and payload. The payload stays in the same buffer: record
/// batches go to the log without a copy.
pub fn split_frame(mut body: BytesMut) -> Result<(FrameHead, BytesMut, BytesMut), WireError> {
    if body.len() < FRAME_HEAD_BYTES {
        return Err(WireError::FrameTooShort { len: body.len() });
    }
    let version = body.get_u8();
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let kind = match body.get_u8() {
        0 => FrameKind::Request,
        1 => FrameKind::Response,
        2 => FrameKind::Notice,
        other => return Err(WireError::UnknownKind(other)),
    };
    let _flags = body.get_u16();
    let request_id = body.get_u32();
    let header_len = body.get_u32() as usize;
    if header_len > body.len() || header_len > HEADER_BYTES_MAX {
        return Err(WireError::BadHeaderLength { len: header_len, available: body.len() });
    }
    let header = body.split_to(header_len);
    Ok((FrameHead { kind, request_id, header_len }, header, body))
}

/// Peeks at the head of a frame body without consuming it: enough to answer
/// a request whose header does not parse with an error carrying its id.
pub fn peek_request_id(body: &[u8]) -> Option<u32> {
    let id = body.get(4..8)?;
    Some(u32::from_be_bytes(id.try_into().ok()?))
}

/// Appends one whole frame to `out`: prefix, head, encoded `header` and
/// `payload`.
pub fn encode_frame<H: Serialize>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    request_id: u32,
    header: &H,
    payload: &[u8],
) -> Result<(), WireError> {
    encode_frame_head(out, kind, request_id, header, payload.len())?;
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends everything of a frame but its payload, whose length the prefix
/// already counts: a large payload (fetch data) can then be written as it
/// is, without being copied behind its header. If `header` does not
/// encode, `out` is lost (postcard takes the buffer); encode into a buffer
/// of its own when that matters.
pub fn encode_frame_head<H: Serialize>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    request_id: u32,
    header: &H,
    payload_len: usize,
) -> Result<(), WireError> {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(kind.byte());
    out.put_u16(0);
    out.put_u32(request_id);
    out.put_u32(0);
    let header_start = out.len();
    let encoded =
        postcard::to_extend(header, std::mem::take(out)).map_err(|error| WireError::Header(error.to_string()));
    *out = encoded?;
    let header_len = out.len() - header_start;
    out[header_start - 4..header_start].copy_from_slice(&(header_len as u32).to_be_bytes());
    let frame_len = out.len() - start - FRAME_PREFIX_BYTES + payload_len;
    out[start..start + 4].copy_from_slice(&(frame_len as u32).to_be_bytes());
    Ok(())
}

/// Decodes a request or response header.
pub fn decode_header<'de, T: Deserialize<'de>>(header: &'de [u8]) -> Result<T, WireError> {
    postcard::from_bytes(header).map_err(|error| WireError::Header(error.to_string()))
}

/// A stable numeric error code. Codes are never reused; a client that
/// receives a code it does not know still decodes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const NONE: ErrorCode = ErrorCode(0);
    /// An unexpected failure inside the broker.
    pub const INTERNAL: ErrorCode = ErrorCode(1);
    pub const UNKNOWN_TOPIC_OR_PARTITION: ErrorCode = ErrorCode(2);
    /// The shard that the metadata names as owner does not have the
    /// partition open (a metadata change is in flight); refresh and retry.
    pub const NOT_OWNER: ErrorCode = ErrorCode(3);
    pub const INVALID_BATCH: ErrorCode = ErrorCode(4);
    pub const BATCH_TOO_LARGE: ErrorCode = ErrorCode(5);
    pub const OFFSET_OUT_OF_RANGE: ErrorCode = ErrorCode(6);
    pub const TOPIC_EXISTS: ErrorCode = ErrorCode(7);
    pub const INVALID_REQUEST: ErrorCode = ErrorCode(8);
    /// The disk is full; retry later.
    pub const STORAGE_FULL: ErrorCode = ErrorCode(9);
    /// The partition failed (I/O error or corruption) and is out of service.
    pub const PARTITION_FAILED: ErrorCode = ErrorCode(10);
    pub const TIMEOUT: ErrorCode = ErrorCode(11);
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(12);
    pub const FRAME_TOO_LARGE: ErrorCode = ErrorCode(13);
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(14);
    pub const INVALID_TOPIC_NAME: ErrorCode = ErrorCode(15);
    pub const INVALID_PARTITION_COUNT: ErrorCode = ErrorCode(16);
    /// The group member id is not (or no longer) in the group: rejoin.
    pub const UNKNOWN_MEMBER: ErrorCode = ErrorCode(17);
    /// The request carries an older generation than the group's: heartbeat
    /// to learn the current generation and assignment, then retry.
    pub const STALE_GENERATION: ErrorCode = ErrorCode(18);
    /// The request reached a shard that does not coordinate the group.
    pub const NOT_COORDINATOR: ErrorCode = ErrorCode(19);
    /// A commit would move a group's offset backwards, past the log end,
    /// or for a partition the member does not own.
    pub const INVALID_COMMIT: ErrorCode = ErrorCode(20);
    /// The group still has members (resets need an empty group).
    pub const GROUP_NOT_EMPTY: ErrorCode = ErrorCode(21);
    pub const INVALID_GROUP: ErrorCode = ErrorCode(22);
    /// The group has no members and no committed offsets: it does not exist.
    pub const UNKNOWN_GROUP: ErrorCode = ErrorCode(23);
    /// The broker will not serve this connection (its shard is full, or the
    /// client's address has too many connections). Sent in a notice frame
    /// just before the broker closes the connection; try again later.
    pub const CONNECTION_REFUSED: ErrorCode = ErrorCode(24);
    /// A topic creation would take the broker past its partition limit
    /// (`topics.partitions_max`) or past the free disk space it needs.
    pub const TOO_MANY_PARTITIONS: ErrorCode = ErrorCode(25);
    /// An idempotent producer's batch does not follow its previous one.
    pub const OUT_OF_ORDER_SEQUENCE: ErrorCode = ErrorCode(26);
    /// An idempotent producer's epoch is older than the partition's.
    pub const PRODUCER_FENCED: ErrorCode = ErrorCode(27);
    /// A retried batch stored long ago: older than the batches remembered,
    /// so its offsets are not known. It is not stored again.
    pub const DUPLICATE_SEQUENCE: ErrorCode = ErrorCode(28);
    /// A topic config the broker does not know, or a value out of range.
    pub const INVALID_CONFIG: ErrorCode = ErrorCode(29);
    /// SASL authentication failed: unknown user, wrong password, or a
    /// malformed exchange. The broker closes the connection after it.
    pub const AUTHENTICATION_FAILED: ErrorCode = ErrorCode(30);
    /// The listener requires authentication and the request came before it.
    pub const AUTHENTICATION_REQUIRED: ErrorCode = ErrorCode(31);
    /// A SASL mechanism the listener does not offer.
    pub const UNSUPPORTED_SASL_MECHANISM: ErrorCode = ErrorCode(32);
    /// The authenticated principal may not do this.
    pub const NOT_AUTHORIZED: ErrorCode = ErrorCode(33);
    /// A credential or user name the broker will not store.
    pub const INVALID_CREDENTIAL: ErrorCode = ErrorCode(34);
    /// The user has no credential for that mechanism.
    pub const UNKNOWN_CREDENTIAL: ErrorCode = ErrorCode(35);

    pub fn is_ok(self) -> bool {
        self == ErrorCode::NONE
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NOT_OWNER
                | ErrorCode::STORAGE_FULL
                | ErrorCode::TIMEOUT
                | ErrorCode::SHUTTING_DOWN
                | ErrorCode::NOT_COORDINATOR
                | ErrorCode::STALE_GENERATION
                | ErrorCode::CONNECTION_REFUSED
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NONE => "none",
            ErrorCode::INTERNAL => "internal",
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION => "unknown topic or partition",
            ErrorCode::NOT_OWNER => "not owner",
            ErrorCode::INVALID_BATCH => "invalid batch",
            ErrorCode::BATCH_TOO_LARGE => "batch too large",
            ErrorCode::OFFSET_OUT_OF_RANGE => "offset out of range",
            ErrorCode::TOPIC_EXISTS => "topic exists",
            ErrorCode::INVALID_REQUEST => "invalid request",
            ErrorCode::STORAGE_FULL => "storage full",
            ErrorCode::PARTITION_FAILED => "partition failed",
            ErrorCode::TIMEOUT => "timeout",
            ErrorCode::SHUTTING_DOWN => "shutting down",
            ErrorCode::FRAME_TOO_LARGE => "frame too large",
            ErrorCode::UNSUPPORTED_VERSION => "unsupported version",
            ErrorCode::INVALID_TOPIC_NAME => "invalid topic name",
            ErrorCode::INVALID_PARTITION_COUNT => "invalid partition count",
            ErrorCode::UNKNOWN_MEMBER => "unknown member",
            ErrorCode::STALE_GENERATION => "stale generation",
            ErrorCode::NOT_COORDINATOR => "not coordinator",
            ErrorCode::INVALID_COMMIT => "invalid commit",
            ErrorCode::GROUP_NOT_EMPTY => "group not empty",
            ErrorCode::INVALID_GROUP => "invalid group",
            ErrorCode::UNKNOWN_GROUP => "unknown group",
            ErrorCode::CONNECTION_REFUSED => "connection refused",
            ErrorCode::TOO_MANY_PARTITIONS => "too many partitions",
            ErrorCode::OUT_OF_ORDER_SEQUENCE => "out of order sequence",
            ErrorCode::PRODUCER_FENCED => "producer fenced",
            ErrorCode::DUPLICATE_SEQUENCE => "duplicate sequence",
            ErrorCode::INVALID_CONFIG => "invalid config",
            ErrorCode::AUTHENTICATION_FAILED => "authentication failed",
            ErrorCode::AUTHENTICATION_REQUIRED => "authentication required",
            ErrorCode::UNSUPPORTED_SASL_MECHANISM => "unsupported SASL mechanism",
            ErrorCode::NOT_AUTHORIZED => "not authorized",
            ErrorCode::INVALID_CREDENTIAL => "invalid credential",
            ErrorCode::UNKNOWN_CREDENTIAL => "unknown credential",
            _ => "unknown error code",
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.name(), self.0)
    }
}

/// A request header. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    Metadata(MetadataRequest),
    CreateTopic(CreateTopicRequest),
    DeleteTopic(DeleteTopicRequest),
    /// Payload: the batches of each listed partition, in list order.
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    Stats,
    /// Which shard coordinates a consumer group.
    FindCoordinator(FindCoordinatorRequest),
    /// The group requests below go to the coordinating shard.
    JoinGroup(JoinGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    CommitOffsets(CommitOffsetsRequest),
    FetchCommitted(FetchCommittedRequest),
    DescribeGroup(DescribeGroupRequest),
    /// Any shard; lists the groups of every shard.
    ListGroups,
    ResetGroup(ResetGroupRequest),
    /// Any shard: a new idempotent producer's id and epoch.
    InitProducerId,
    /// Any shard: the configs of topics.
    DescribeConfigs(DescribeConfigsRequest),
    /// Any shard (shard 0 applies it): changes a topic's configs.
    AlterConfigs(AlterConfigsRequest),
    /// Deletes the records below an offset in partitions (any shard).
    DeleteRecords(DeleteRecordsRequest),
    /// One step of a SASL login: the first requests on a listener that
    /// requires one.
    SaslAuthenticate(SaslAuthenticateRequest),
    /// Sets and removes users' SCRAM credentials (superusers only when
    /// logins are on).
    AlterCredentials(AlterCredentialsRequest),
    /// Lists users and the mechanisms they have credentials for.
    DescribeCredentials,
    /// Adds ACL bindings, then removes what each filter matches.
    AlterAcls(AlterAclsRequest),
    /// The ACL bindings a filter matches.
    DescribeAcls(crate::protocol::acl::AclFilter),
}

impl Request {
    /// The request's name in snake case, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Metadata(_) => "metadata",
            Request::CreateTopic(_) => "create_topic",
            Request::DeleteTopic(_) => "delete_topic",
            Request::Produce(_) => "produce",
            Request::Fetch(_) => "fetch",
            Request::ListOffsets(_) => "list_offsets",
            Request::Stats => "stats",
            Request::FindCoordinator(_) => "find_coordinator",
            Request::JoinGroup(_) => "join_group",
            Request::Heartbeat(_) => "heartbeat",
            Request::LeaveGroup(_) => "leave_group",
            Request::CommitOffsets(_) => "commit_offsets",
            Request::FetchCommitted(_) => "fetch_committed",
            Request::DescribeGroup(_) => "describe_group",
            Request::ListGroups => "list_groups",
            Request::ResetGroup(_) => "reset_group",
            Request::InitProducerId => "init_producer_id",
            Request::DescribeConfigs(_) => "describe_configs",
            Request::AlterConfigs(_) => "alter_configs",
            Request::DeleteRecords(_) => "delete_records",
            Request::SaslAuthenticate(_) => "sasl_authenticate",
            Request::AlterCredentials(_) => "alter_credentials",
            Request::DescribeCredentials => "describe_credentials",
            Request::AlterAcls(_) => "alter_acls",
            Request::DescribeAcls(_) => "describe_acls",
        }
    }
}

/// A response header. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Metadata(MetadataResponse),
    CreateTopic(TopicResult),
    DeleteTopic(TopicResult),
    Produce(ProduceResponse),
    /// Payload: the data of each listed partition, in list order.
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    Stats(StatsResponse),
    FindCoordinator(FindCoordinatorResponse),
    JoinGroup(GroupAssignment),
    Heartbeat(GroupAssignment),
    LeaveGroup(GroupResult),
    CommitOffsets(CommitOffsetsResponse),
    FetchCommitted(FetchCommittedResponse),
    DescribeGroup(DescribeGroupResponse),
    ListGroups(ListGroupsResponse),
    ResetGroup(GroupResult),
    /// The request as a whole failed (it did not parse, or the broker could
    /// not serve it).
    Error(ErrorResponse),
    InitProducerId(ProducerIdentity),
    DescribeConfigs(DescribeConfigsResponse),
    AlterConfigs(TopicResult),
    DeleteRecords(DeleteRecordsResponse),
    SaslAuthenticate(SaslAuthenticateResponse),
    AlterCredentials(AlterCredentialsResponse),
    DescribeCredentials(DescribeCredentialsResponse),
    AlterAcls(AlterAclsResponse),
    DescribeAcls(DescribeAclsResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterAclsRequest {
    pub add: Vec<crate::protocol::acl::AclBinding>,
    pub remove: Vec<crate::protocol::acl::AclFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterAclsResponse {
    pub error: ErrorCode,
    pub message: String,
    /// The bindings the filters removed.
    pub removed: Vec<crate::protocol::acl::AclBinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeAclsResponse {
    pub error: ErrorCode,
    pub acls: Vec<crate::protocol::acl::AclBinding>,
}

/// One step of a SASL login. `mechanism` names it in every step (the
/// broker checks it stays the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaslAuthenticateRequest {
    pub mechanism: String,
    pub token: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaslAuthenticateResponse {
    pub error: ErrorCode,
    pub message: String,
    /// The broker's next token (or its last, once `done`).
    pub token: Vec<u8>,
    /// The login succeeded: requests are served from now on.
    pub done: bool,
}

/// Credentials to set (each from a password the client salted) and remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterCredentialsRequest {
    pub upserts: Vec<CredentialUpsert>,
    pub deletions: Vec<CredentialDeletion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialUpsert {
    pub user: String,
    pub mechanism: crate::protocol::scram::ScramMechanism,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialDeletion {
    pub user: String,
    pub mechanism: crate::protocol::scram::ScramMechanism,
}

/// One result per upsert, then one per deletion, each named by its user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlterCredentialsResponse {
    pub results: Vec<TopicResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeCredentialsResponse {
    pub error: ErrorCode,
    /// Each user with its (mechanism, iterations).
    pub users: Vec<(String, Vec<(crate::protocol::scram::ScramMechanism, u32)>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeConfigsRequest {
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeConfigsResponse {
    pub topics: Vec<TopicConfigs>,
}

/// One topic's configs: every config the broker serves, with its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfigs {
    pub name: String,
    pub error: ErrorCode,
    pub configs: Vec<ConfigValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    /// Kafka's name for it, such as `retention.ms`.
    pub name: String,
    pub value: String,
    /// Not set for the topic: the broker's setting.
    pub is_default: bool,
}

/// Sets and resets configs of one topic; the others keep their values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterConfigsRequest {
    pub topic: String,
    pub set: Vec<(String, String)>,
    /// Returned to the broker's setting.
    pub reset: Vec<String>,
    /// Check the change, apply nothing.
    pub validate_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecordsRequest {
    pub partitions: Vec<DeleteRecordsPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecordsPartition {
    pub topic: String,
    pub partition: PartitionId,
    /// Records below this go; `None`: all durable records.
    pub before: Option<Offset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecordsResponse {
    pub partitions: Vec<DeleteRecordsResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecordsResult {
    pub topic: String,
    pub partition: PartitionId,
    pub error: ErrorCode,
    /// The partition's first offset afterwards.
    pub log_start: Offset,
}

/// An idempotent producer's id and epoch: its batches carry them, with a
/// sequence number per partition, and each partition stores each of its
/// batches once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub epoch: i16,
}

impl Response {
    /// The request's result as one code: the whole request's error, else
    /// the first error of its partitions, else `NONE`.
    pub fn error_code(&self) -> ErrorCode {
        fn first(mut codes: impl Iterator<Item = ErrorCode>) -> Option<ErrorCode> {
            codes.find(|code| !code.is_ok())
        }
        let code = match self {
            Response::Error(error) => Some(error.code),
            Response::CreateTopic(result) | Response::DeleteTopic(result) | Response::AlterConfigs(result) => {
                Some(result.error)
            }
            Response::DescribeConfigs(response) => first(response.topics.iter().map(|t| t.error)),
            Response::DeleteRecords(response) => first(response.partitions.iter().map(|p| p.error)),
            Response::Produce(response) => first(response.partitions.iter().map(|p| p.error)),
            Response::Fetch(response) => first(response.partitions.iter().map(|p| p.error)),
            Response::ListOffsets(response) => first(response.partitions.iter().map(|p| p.error)),
            Response::JoinGroup(assignment) | Response::Heartbeat(assignment) => Some(assignment.error),
            Response::LeaveGroup(result) | Response::ResetGroup(result) => Some(result.error),
            Response::CommitOffsets(response) => Some(response.error)
                .filter(|code| !code.is_ok())
                .or_else(|| first(response.partitions.iter().map(|p| p.error))),
            Response::FetchCommitted(response) => Some(response.error),
            Response::DescribeGroup(response) => Some(response.error),
            Response::SaslAuthenticate(response) => Some(response.error),
            Response::AlterCredentials(response) => first(response.results.iter().map(|r| r.error)),
            Response::DescribeCredentials(response) => Some(response.error),
            Response::AlterAcls(response) => Some(response.error),
            Response::DescribeAcls(response) => Some(response.error),
            Response::Pong
            | Response::Metadata(_)
            | Response::Stats(_)
            | Response::FindCoordinator(_)
            | Response::ListGroups(_)
            | Response::InitProducerId(_) => None,
        };
        code.unwrap_or(ErrorCode::NONE)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataRequest {
    /// `None`: every topic.
    pub topics: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataResponse {
    /// Each shard's own port (on the host the client connected to); 0 when
    /// the broker has no per-shard ports.
    pub shards: Vec<ShardEndpoint>,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEndpoint {
    pub shard: ShardId,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    pub error: ErrorCode,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetadata {
    pub partition: PartitionId,
    /// The shard that owns (leads) the partition.
    pub shard: ShardId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    pub name: String,
    /// 0: the broker's default.
    pub partitions: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteTopicRequest {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicResult {
    pub name: String,
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProduceRequest {
    pub acks: AckLevel,
    /// How long the broker may wait for the acks before answering TIMEOUT.
    pub timeout_ms: u32,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducePartition {
    pub topic: String,
    pub partition: PartitionId,
    /// Bytes of this partition's batches (one or more, concatenated) in the payload.
    pub batch_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProduceResponse {
    pub partitions: Vec<ProducePartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducePartitionResult {
    pub topic: String,
    pub partition: PartitionId,
    pub error: ErrorCode,
    /// Offset of the first record appended (meaningless on error).
    pub base_offset: Offset,
    /// One past the last record appended.
    pub next_offset: Offset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Long-poll: how long to wait for `min_bytes` to become available.
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    /// Limit over all partitions (the first batch is returned whole even if larger).
    pub max_bytes: u32,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: PartitionId,
    pub offset: Offset,
    pub max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub partitions: Vec<FetchPartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchPartitionResult {
    pub topic: String,
    pub partition: PartitionId,
    pub error: ErrorCode,
    /// End of the visible (durable) log.
    pub high_watermark: Offset,
    /// First offset still held.
    pub log_start: Offset,
    /// Bytes of whole batches for this partition in the payload.
    pub bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListOffsetsRequest {
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListOffsetsPartition {
    pub topic: String,
    pub partition: PartitionId,
    pub spec: OffsetSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    Earliest,
    /// The end of the visible log: the offset the next record will get.
    Latest,
    /// The first offset whose batch timestamp is at or after this time (ms).
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListOffsetsResponse {
    pub partitions: Vec<ListOffsetsResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListOffsetsResult {
    pub topic: String,
    pub partition: PartitionId,
    pub error: ErrorCode,
    /// `None` for a timestamp later than every record.
    pub offset: Option<Offset>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    pub shards: Vec<ShardStats>,
}

/// Counters of one shard, as name/value pairs so new counters need no
/// protocol change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: ShardId,
    pub counters: Vec<(String, u64)>,
    /// fdatasync latency percentiles: (percentile, microseconds).
    pub fsync_latency_us: Vec<(f64, u64)>,
    /// Partitions out of service on this shard, as "topic-partition: reason".
    pub failed_partitions: Vec<String>,
    /// Durable offset-commit latency percentiles: (percentile, microseconds).
    pub commit_latency_us: Vec<(f64, u64)>,
    /// Produce requests with acks: percentiles of the time from the request
    /// being decoded to its answer being ready (reading the request and
    /// writing the answer not included: see `produce_request_latency_us`).
    pub produce_latency_us: Vec<(f64, u64)>,
    /// Produce requests with acks: percentiles of the time from the
    /// request's first bytes read to its answer written to the socket (the
    /// broker's whole share; the socket buffers and the client excluded).
    pub produce_request_latency_us: Vec<(f64, u64)>,
    /// The O_DIRECT write of each partition flush: (percentile, microseconds).
    pub write_latency_us: Vec<(f64, u64)>,
    /// Each partition flush's wait before its write, from its first batch
    /// being queued (mostly the flush in progress): (percentile, microseconds).
    pub flush_queue_latency_us: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn produce() -> Request {
        Request::Produce(ProduceRequest {
            acks: AckLevel::Durable,
            timeout_ms: 5000,
            partitions: vec![ProducePartition { topic: "orders".into(), partition: PartitionId(3), batch_bytes: 5 }],
        })
    }

    fn body(frame: &[u8]) -> BytesMut {
        BytesMut::from(&frame[FRAME_PREFIX_BYTES..])
    }

    #[test]
    fn a_frame_round_trips_with_its_payload() {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Request, 77, &produce(), b"hello").unwrap();
        let len = frame_len(out[..4].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(len, out.len() - 4);
        let (head, header, payload) = split_frame(body(&out)).unwrap();
        assert_eq!(head.kind, FrameKind::Request);
        assert_eq!(head.request_id, 77);
        assert_eq!(decode_header::<Request>(&header).unwrap(), produce());
        assert_eq!(&payload[..], b"hello");
        assert_eq!(peek_request_id(&body(&out)), Some(77));
    }

    #[test]
    fn a_frame_head_plus_its_payload_is_the_whole_frame() {
        let (mut whole, mut head) = (Vec::new(), Vec::new());
        encode_frame(&mut whole, FrameKind::Response, 9, &produce(), b"payload").unwrap();
        encode_frame_head(&mut head, FrameKind::Response, 9, &produce(), 7).unwrap();
        head.extend_from_slice(b"payload");
        assert_eq!(head, whole);
    }

    #[test]
    fn frames_are_checked_before_anything_is_allocated() {
        assert_eq!(
            frame_len(u32::MAX.to_be_bytes(), 1 << 20),
            Err(WireError::FrameTooLarge { len: u32::MAX as usize, max: 1 << 20 })
        );
        assert_eq!(frame_len(3u32.to_be_bytes(), 1 << 20), Err(WireError::FrameTooShort { len: 3 }));
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Request, 1, &Request::Ping, &[]).unwrap();
        let mut bad_version = body(&out);
        bad_version[0] = 9;
        assert_eq!(split_frame(bad_version).unwrap_err(), WireError::UnsupportedVersion(9));
        let mut bad_kind = body(&out);
        bad_kind[1] = 7;
        assert_eq!(split_frame(bad_kind).unwrap_err(), WireError::UnknownKind(7));
        let mut bad_header_len = body(&out);
        bad_header_len[8..12].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(split_frame(bad_header_len), Err(WireError::BadHeaderLength { .. })));
    }

    #[test]
    fn unknown_error_codes_still_decode() {
        let response = Response::Error(ErrorResponse { code: ErrorCode(999), message: "future".into() });
        let bytes = postcard::to_allocvec(&response).unwrap();
        assert_eq!(decode_header::<Response>(&bytes).unwrap(), response);
        assert_eq!(ErrorCode(999).name(), "unknown error code");
        assert!(ErrorCode::STORAGE_FULL.is_retriable());
        assert!(!ErrorCode::INVALID_BATCH.is_retriable());
    }

    #[test]
    fn offsets_beyond_the_wire_range_do_not_decode() {
        let result =
            ListOffsetsResult { topic: "t".into(), partition: PartitionId(0), error: ErrorCode::NONE, offset: None };
        let mut bytes =
            postcard::to_allocvec(&Response::ListOffsets(ListOffsetsResponse { partitions: vec![result] })).unwrap();
        // Replace `None` (0) with `Some(u64::MAX)` as a varint.
        bytes.pop();
        bytes.push(1);
        bytes.extend_from_slice(&[0xFF; 9]);
        bytes.push(0x01);
        assert!(decode_header::<Response>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_header::<Request>(&bytes);
            let _ = decode_header::<Response>(&bytes);
            let _ = split_frame(BytesMut::from(&bytes[..]));
            let _ = peek_request_id(&bytes);
            if bytes.len() >= 4 {
                let _ = frame_len(bytes[..4].try_into().unwrap(), 1 << 20);
            }
        }

        #[test]
        fn mutated_request_frames_never_panic(index in 0usize..64, value in any::<u8>()) {
            let mut out = Vec::new();
            encode_frame(&mut out, FrameKind::Request, 5, &produce(), b"abcde").unwrap();
            let mut body = body(&out);
            let at = index % body.len();
            body[at] = value;
            if let Ok((_, header, _)) = split_frame(body) {
                let _ = decode_header::<Request>(&header);
            }
        }
    }
}

// Consumer groups -----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindCoordinatorRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindCoordinatorResponse {
    pub group: String,
    pub shard: ShardId,
    /// The coordinator's own port (0: use the shared port).
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinGroupRequest {
    pub group: String,
    /// `None` for a new member; the coordinator assigns an id.
    pub member_id: Option<String>,
    pub topics: Vec<String>,
    /// A member that sends no heartbeat for this long is removed.
    pub session_timeout_ms: u32,
    /// How long a member may take to give up partitions it is asked to
    /// release before the coordinator takes them away anyway.
    pub rebalance_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub group: String,
    pub member_id: String,
    /// The generation the member is working in; a newer one in the answer
    /// means its assignment changed.
    pub generation: u32,
}

/// The answer to a join or heartbeat: the member's partitions now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAssignment {
    pub error: ErrorCode,
    pub member_id: String,
    pub generation: u32,
    /// Partitions this member owns in this generation. Partitions it is
    /// asked to give up are already absent; partitions moving to it appear
    /// once their previous owner has released them.
    pub assignment: Vec<TopicPartitions>,
    /// Whether more changes to this member's assignment are pending (heartbeat soon).
    pub rebalancing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<PartitionId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaveGroupRequest {
    pub group: String,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupResult {
    pub group: String,
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitOffsetsRequest {
    pub group: String,
    pub member_id: String,
    pub generation: u32,
    pub offsets: Vec<OffsetCommit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: PartitionId,
    /// The next offset to consume (one past the last processed record).
    pub offset: Offset,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitOffsetsResponse {
    /// Whole-request problems (unknown member, stale generation).
    pub error: ErrorCode,
    pub partitions: Vec<CommitResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitResult {
    pub topic: String,
    pub partition: PartitionId,
    pub error: ErrorCode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchCommittedRequest {
    pub group: String,
    /// `None`: every partition the group has committed.
    pub partitions: Option<Vec<TopicPartitions>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchCommittedResponse {
    pub error: ErrorCode,
    pub offsets: Vec<CommittedOffset>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: PartitionId,
    /// `None`: nothing committed yet.
    pub offset: Option<Offset>,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeGroupRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeGroupResponse {
    pub group: String,
    pub error: ErrorCode,
    /// "empty", "stable" or "rebalancing".
    pub state: String,
    pub generation: u32,
    pub members: Vec<MemberDescription>,
    pub offsets: Vec<PartitionLag>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberDescription {
    pub member_id: String,
    pub topics: Vec<String>,
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: PartitionId,
    pub committed: Option<Offset>,
    /// End of the visible log.
    pub log_end: Option<Offset>,
    /// `log_end - committed` (or everything when nothing is committed).
    pub lag: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListGroupsResponse {
    pub groups: Vec<GroupListing>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupListing {
    pub group: String,
    pub coordinator: ShardId,
    pub state: String,
    pub members: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResetGroupRequest {
    pub group: String,
    pub topic: String,
    pub to: ResetTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetTarget {
    Earliest,
    Latest,
    Offset(Offset),
}

/// Which shard coordinates a group: a stable hash of its name. Clients may
/// compute it themselves or ask with FindCoordinator.
pub fn coordinator_of(group: &str, shard_count: usize) -> ShardId {
    let hash = crc32c::crc32c(group.as_bytes());
    ShardId((hash as usize % shard_count.max(1)) as u16)
}
