//! The shard-aware client: one bootstrap connection plus, lazily, one
//! connection per shard port, and a metadata cache that says which shard
//! owns each partition.
//!
//! Every shard of a broker listens on the shared port and on its own port.
//! Sending a partition's requests to its owner's own port means the broker
//! never forwards them between cores; sending everything to the bootstrap
//! connection (`shard_aware: false`) is still correct, the broker forwards,
//! and tests use it to exercise that path.
//!
//! Stale metadata heals itself: a per-partition `NOT_OWNER` or
//! `UNKNOWN_TOPIC_OR_PARTITION` answer refreshes the topic's metadata and the
//! request is retried once. Both codes mean the broker did not act on the
//! request, so the retry cannot duplicate records.
//!
//! Consumer-group requests go to the group's coordinator shard, found with
//! FindCoordinator and cached per group. Any shard would forward them, but
//! the coordinator's own port saves a hop on every heartbeat and commit. A
//! `NOT_COORDINATOR` answer (the cache is stale) refreshes the entry and the
//! request is retried once; that code, too, means nothing was done.

use std::cell::RefCell;
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::connection::{Connection, ConnectionOptions};
use super::error::ClientError;
use super::tls::ClientTls;
use crate::protocol::types::{AckLevel, Offset, PartitionId, ShardId};
use crate::protocol::wire::{
    AlterConfigsRequest, CommitOffsetsRequest, CommitOffsetsResponse, CommittedOffset, ConfigValue, CreateTopicRequest,
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteTopicRequest, DescribeConfigsRequest, DescribeGroupRequest,
    DescribeGroupResponse, ErrorCode, FetchCommittedRequest, FetchPartition, FetchPartitionResult, FetchRequest,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupAssignment, GroupListing, GroupResult, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsResult, MetadataRequest,
    MetadataResponse, OffsetCommit, OffsetSpec, ProducePartition, ProducePartitionResult, ProduceRequest,
    ProducerIdentity, Request, ResetGroupRequest, ResetTarget, Response, StatsResponse, TopicMetadata, TopicPartitions,
    TopicResult,
};

/// Groups whose coordinator address is cached. A client uses a handful of
/// groups; past this many the cache starts over rather than grow.
const COORDINATORS_CACHED_MAX: usize = 1024;

/// How a [`Client`] connects and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Send partition requests straight to the owning shard's port.
    pub shard_aware: bool,
    /// How long a request waits for its response (long-poll fetches and
    /// produce requests add the wait they ask the broker for).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest frame accepted from the broker; also the largest sent.
    pub max_frame_bytes: usize,
    /// Requests in flight per connection.
    pub max_in_flight_requests: usize,
    /// TLS to every broker port (`None`: plain TCP).
    pub tls: Option<ClientTls>,
    /// Log in on every connection (`None`: no login).
    pub sasl: Option<super::SaslCredentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let connection = ConnectionOptions::default();
        ClientOptions {
            shard_aware: true,
            request_timeout: connection.request_timeout,
            connect_timeout: connection.connect_timeout,
            max_frame_bytes: connection.max_frame_bytes,
            max_in_flight_requests: connection.max_in_flight_requests,
            tls: connection.tls,
            sasl: connection.sasl,
        }
    }
}

impl ClientOptions {
    fn connection_options(&self) -> ConnectionOptions {
        ConnectionOptions {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            max_frame_bytes: self.max_frame_bytes,
            max_in_flight_requests: self.max_in_flight_requests,
            tls: self.tls.clone(),
            sasl: self.sasl.clone(),
        }
    }
}

/// A client of one broker. Cheap to clone (an `Rc`); lives on the glommio
/// executor that created it.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

struct Inner {
    bootstrap: SocketAddr,
    options: ClientOptions,
    /// Open connections by address; the bootstrap connection is one of them.
    connections: RefCell<HashMap<SocketAddr, Connection>>,
    cache: RefCell<MetadataCache>,
    /// Where each group's requests go: its coordinator's shard port (or the
    /// bootstrap address). At most `COORDINATORS_CACHED_MAX` entries.
    coordinators: RefCell<HashMap<String, SocketAddr>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.bootstrap)
            .field("options", &self.inner.options)
            .field("connections", &self.inner.connections.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the bootstrap address (the broker's shared port).
    pub async fn connect(bootstrap: SocketAddr, options: ClientOptions) -> Result<Client, ClientError> {
        let connection = Connection::connect_with(bootstrap, options.connection_options()).await?;
        let connections = RefCell::new(HashMap::from([(bootstrap, connection)]));
        let inner = Inner {
            bootstrap,
            options,
            connections,
            cache: RefCell::new(MetadataCache::default()),
            coordinators: RefCell::new(HashMap::new()),
        };
        Ok(Client { inner: Rc::new(inner) })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    pub fn bootstrap_addr(&self) -> SocketAddr {
        self.inner.bootstrap
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.bootstrap_call(&Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected("Pong", &other)),
        }
    }

    /// Fetches metadata for `topics` (`None`: every topic) and refreshes the
    /// cache with it.
    pub async fn metadata(&self, topics: Option<Vec<String>>) -> Result<MetadataResponse, ClientError> {
        let requested = topics.clone();
        let response = match self.bootstrap_call(&Request::Metadata(MetadataRequest { topics })).await? {
            Response::Metadata(metadata) => metadata,
            other => return Err(unexpected("Metadata", &other)),
        };
        self.inner.cache.borrow_mut().apply(requested.as_deref(), &response);
        Ok(response)
    }

    /// Creates a topic (`partitions` 0: the broker's default). An existing
    /// topic is an error with code `TOPIC_EXISTS`.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), ClientError> {
        let request = Request::CreateTopic(CreateTopicRequest { name: name.to_owned(), partitions });
        let result = match self.bootstrap_call(&request).await? {
            Response::CreateTopic(result) => result,
            other => return Err(unexpected("CreateTopic", &other)),
        };
        // The placement is learned on first use, from the broker that made it.
        self.inner.cache.borrow_mut().forget(name);
        topic_result(result)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::DeleteTopic(DeleteTopicRequest { name: name.to_owned() });
        let result = match self.bootstrap_call(&request).await? {
            Response::DeleteTopic(result) => result,
            other => return Err(unexpected("DeleteTopic", &other)),
        };
        self.inner.cache.borrow_mut().forget(name);
        topic_result(result)
    }

    /// Every config the broker serves for `topic`, with its value.
    pub async fn describe_configs(&self, topic: &str) -> Result<Vec<ConfigValue>, ClientError> {
        let request = Request::DescribeConfigs(DescribeConfigsRequest { topics: vec![topic.to_owned()] });
        let response = match self.bootstrap_call(&request).await? {
            Response::DescribeConfigs(response) => response,
            other => return Err(unexpected("DescribeConfigs", &other)),
        };
        let found = response.topics.into_iter().find(|configs| configs.name == topic);
        let configs = found.ok_or_else(|| ClientError::UnexpectedResponse(format!("no configs for {topic}")))?;
        if !configs.error.is_ok() {
            return Err(ClientError::broker(configs.error, format!("topic {topic}: {}", configs.error.name())));
        }
        Ok(configs.configs)
    }

    /// Sets configs of `topic` (Kafka's names, such as `retention.ms`) and
    /// returns others (`reset`) to the broker's settings; the rest keep
    /// their values. An unknown config or a bad value is an error with code
    /// `INVALID_CONFIG`, and nothing changes.
    pub async fn alter_configs(
        &self,
        topic: &str,
        set: Vec<(String, String)>,
        reset: Vec<String>,
        validate_only: bool,
    ) -> Result<(), ClientError> {
        let request = Request::AlterConfigs(AlterConfigsRequest { topic: topic.to_owned(), set, reset, validate_only });
        match self.bootstrap_call(&request).await? {
            Response::AlterConfigs(result) => topic_result(result),
            other => Err(unexpected("AlterConfigs", &other)),
        }
    }

    /// Sets and removes users' SCRAM credentials: one result per upsert,
    /// then per deletion (each with its own error code).
    pub async fn alter_credentials(
        &self,
        upserts: Vec<crate::protocol::wire::CredentialUpsert>,
        deletions: Vec<crate::protocol::wire::CredentialDeletion>,
    ) -> Result<Vec<TopicResult>, ClientError> {
        let request = Request::AlterCredentials(crate::protocol::wire::AlterCredentialsRequest { upserts, deletions });
        match self.bootstrap_call(&request).await? {
            Response::AlterCredentials(response) => Ok(response.results),
            other => Err(unexpected("AlterCredentials", &other)),
        }
    }

    /// Every user with the mechanisms (and iterations) it can log in with.
    pub async fn describe_credentials(
        &self,
    ) -> Result<Vec<(String, Vec<(crate::protocol::scram::ScramMechanism, u32)>)>, ClientError> {
        match self.bootstrap_call(&Request::DescribeCredentials).await? {
            Response::DescribeCredentials(response) if response.error.is_ok() => Ok(response.users),
            Response::DescribeCredentials(response) => {
                Err(ClientError::broker(response.error, format!("describing users: {}", response.error.name())))
            }
            other => Err(unexpected("DescribeCredentials", &other)),
        }
    }

    /// Adds ACL bindings, then removes what each filter matches; returns
    /// the bindings removed.
    pub async fn alter_acls(
        &self,
        add: Vec<crate::protocol::acl::AclBinding>,
        remove: Vec<crate::protocol::acl::AclFilter>,
    ) -> Result<Vec<crate::protocol::acl::AclBinding>, ClientError> {
        let request = Request::AlterAcls(crate::protocol::wire::AlterAclsRequest { add, remove });
        match self.bootstrap_call(&request).await? {
            Response::AlterAcls(response) if response.error.is_ok() => Ok(response.removed),
            Response::AlterAcls(response) => Err(ClientError::broker(response.error, response.message)),
            other => Err(unexpected("AlterAcls", &other)),
        }
    }

    /// The ACL bindings `filter` matches.
    pub async fn describe_acls(
        &self,
        filter: crate::protocol::acl::AclFilter,
    ) -> Result<Vec<crate::protocol::acl::AclBinding>, ClientError> {
        match self.bootstrap_call(&Request::DescribeAcls(filter)).await? {
            Response::DescribeAcls(response) if response.error.is_ok() => Ok(response.acls),
            Response::DescribeAcls(response) => {
                Err(ClientError::broker(response.error, format!("describing ACLs: {}", response.error.name())))
            }
            other => Err(unexpected("DescribeAcls", &other)),
        }
    }

    /// Deletes the records of a partition below `before` (`None`: every
    /// durable record). Returns the partition's first offset afterwards.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: PartitionId,
        before: Option<Offset>,
    ) -> Result<Offset, ClientError> {
        let partitions = vec![DeleteRecordsPartition { topic: topic.to_owned(), partition, before }];
        let request = Request::DeleteRecords(DeleteRecordsRequest { partitions });
        let response = match self.bootstrap_call(&request).await? {
            Response::DeleteRecords(response) => response,
            other => return Err(unexpected("DeleteRecords", &other)),
        };
        let result = response.partitions.into_iter().next();
        let result = result.ok_or_else(|| ClientError::UnexpectedResponse("an empty DeleteRecords answer".into()))?;
        if !result.error.is_ok() {
            let message = format!("{topic}/{partition}: {}", result.error.name());
            return Err(ClientError::broker(result.error, message));
        }
        Ok(result.log_start)
    }

    /// The topic's partition count, from the cache, asking the broker once
    /// if the topic is not cached.
    pub async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(count) = self.cached_partitions(topic) {
            return Ok(count);
        }
        self.refresh_topic(topic).await?;
        self.cached_partitions(topic).ok_or_else(|| ClientError::NoSuchTopic(topic.to_owned()))
    }

    /// The topic's partition count if the cache knows it; never waits.
    pub fn cached_partitions(&self, topic: &str) -> Option<u32> {
        self.inner.cache.borrow().partition_count(topic)
    }

    /// Changes whenever the cached metadata may have changed; see
    /// [`Transport::metadata_epoch`](super::Transport::metadata_epoch).
    pub fn metadata_epoch(&self) -> u64 {
        self.inner.cache.borrow().epoch
    }

    /// Appends already-encoded record batches to one partition, with the
    /// client's request timeout as the broker's ack timeout. See
    /// [`produce_raw_with_timeout`](Self::produce_raw_with_timeout).
    pub async fn produce_raw(
        &self,
        topic: &str,
        partition: PartitionId,
        batches: &[u8],
        acks: AckLevel,
    ) -> Result<ProducePartitionResult, ClientError> {
        let timeout_ms = duration_ms(self.inner.options.request_timeout);
        self.produce_raw_with_timeout(topic, partition, batches, acks, timeout_ms).await
    }

    /// Appends `batches` (one or more RecordBatch v2, concatenated) to one
    /// partition, on the connection to its owning shard. A per-partition
    /// error is returned as [`ClientError::Broker`].
    ///
    /// With [`AckLevel::None`] it returns as soon as the request is written;
    /// the broker assigns offsets later and says nothing, so the result's
    /// offsets are both [`Offset::ZERO`].
    pub async fn produce_raw_with_timeout(
        &self,
        topic: &str,
        partition: PartitionId,
        batches: &[u8],
        acks: AckLevel,
        timeout_ms: u32,
    ) -> Result<ProducePartitionResult, ClientError> {
        let batch_bytes = u32::try_from(batches.len())
            .map_err(|_| ClientError::InvalidArgument(format!("{} bytes of batches exceed u32", batches.len())))?;
        let partitions = vec![ProducePartition { topic: topic.to_owned(), partition, batch_bytes }];
        let request = Request::Produce(ProduceRequest { acks, timeout_ms, partitions });
        let deadline = self.inner.options.request_timeout + Duration::from_millis(u64::from(timeout_ms));
        let request = &request;
        self.with_partition_retry(topic, partition, "produce to", |connection| async move {
            if acks == AckLevel::None {
                connection.send_only(request, batches).await?;
                return Ok(ProducePartitionResult {
                    topic: topic.to_owned(),
                    partition,
                    error: ErrorCode::NONE,
                    base_offset: Offset::ZERO,
                    next_offset: Offset::ZERO,
                });
            }
            match connection.call_with_timeout(request, batches, deadline).await?.0 {
                Response::Produce(response) => only_partition(response.partitions, topic, partition),
                other => Err(unexpected("Produce", &other)),
            }
        })
        .await
    }

    /// Fetches whole batches from `offset` on: the first batch returned is the
    /// one containing `offset`. Long-polls up to `max_wait_ms` when there is
    /// nothing to return yet. The `Bytes` are this partition's batches.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(FetchPartitionResult, Bytes), ClientError> {
        let partitions = vec![FetchPartition { topic: topic.to_owned(), partition, offset, max_bytes }];
        let request = Request::Fetch(FetchRequest { max_wait_ms, min_bytes: 1, max_bytes, partitions });
        let deadline = self.inner.options.request_timeout + Duration::from_millis(u64::from(max_wait_ms));
        let request = &request;
        self.with_partition_retry(topic, partition, "fetch from", |connection| async move {
            match connection.call_with_timeout(request, &[], deadline).await? {
                (Response::Fetch(response), payload) => {
                    fetched_partition(response.partitions, payload, topic, partition)
                }
                (other, _) => Err(unexpected("Fetch", &other)),
            }
        })
        .await
    }

    /// Looks up an offset of one partition: its start, its end, or the first
    /// offset at or after a timestamp (`None` if every record is older).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: PartitionId,
        spec: OffsetSpec,
    ) -> Result<Option<Offset>, ClientError> {
        let partitions = vec![ListOffsetsPartition { topic: topic.to_owned(), partition, spec }];
        let request = Request::ListOffsets(ListOffsetsRequest { partitions });
        let request = &request;
        let result = self
            .with_partition_retry(topic, partition, "list offsets of", |connection| async move {
                match connection.call(request, &[]).await?.0 {
                    Response::ListOffsets(response) => only_partition(response.partitions, topic, partition),
                    other => Err(unexpected("ListOffsets", &other)),
                }
            })
            .await?;
        Ok(result.offset)
    }

    /// Runs `attempt` on the partition's connection. An answer whose
    /// partition error says the metadata is stale (`NOT_OWNER`,
    /// `UNKNOWN_TOPIC_OR_PARTITION`) refreshes the topic's metadata and
    /// tries once more; any other error is the caller's.
    async fn with_partition_retry<R: PartitionAnswer, F, Fut>(
        &self,
        topic: &str,
        partition: PartitionId,
        what: &str,
        mut attempt: F,
    ) -> Result<R, ClientError>
    where
        F: FnMut(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<R, ClientError>>,
    {
        let mut refreshed = false;
        loop {
            let connection = self.partition_connection(topic, partition).await?;
            let answer = attempt(connection).await?;
            let code = answer.error();
            if code.is_ok() {
                return Ok(answer);
            }
            if !refreshed && needs_refresh(code) {
                refreshed = true;
                self.refresh_topic(topic).await?;
                continue;
            }
            return Err(partition_error(code, what, topic, partition));
        }
    }

    /// Every shard's counters.
    pub async fn stats(&self) -> Result<StatsResponse, ClientError> {
        match self.bootstrap_call(&Request::Stats).await? {
            Response::Stats(stats) => Ok(stats),
            other => Err(unexpected("Stats", &other)),
        }
    }

    /// Asks which shard coordinates `group` and caches where its requests go
    /// (port 0: the broker has no shard ports, so the bootstrap address).
    /// A new idempotent producer's id and epoch (from the bootstrap shard).
    pub async fn init_producer_id(&self) -> Result<ProducerIdentity, ClientError> {
        match self.bootstrap_call(&Request::InitProducerId).await? {
            Response::InitProducerId(identity) => Ok(identity),
            other => Err(unexpected("InitProducerId", &other)),
        }
    }

    pub async fn find_coordinator(&self, group: &str) -> Result<FindCoordinatorResponse, ClientError> {
        let request = Request::FindCoordinator(FindCoordinatorRequest { group: group.to_owned() });
        let response = match self.bootstrap_call(&request).await? {
            Response::FindCoordinator(response) => response,
            other => return Err(unexpected("FindCoordinator", &other)),
        };
        let addr = self.shard_addr(response.port);
        let mut coordinators = self.inner.coordinators.borrow_mut();
        if coordinators.len() >= COORDINATORS_CACHED_MAX && !coordinators.contains_key(group) {
            coordinators.clear();
        }
        coordinators.insert(group.to_owned(), addr);
        Ok(response)
    }

    /// Joins a group (`member_id: None` for a new member) and returns the
    /// member's id, the generation and the partitions it owns now. An error
    /// code in the answer is returned as [`ClientError::Broker`].
    pub async fn join_group(&self, request: JoinGroupRequest) -> Result<GroupAssignment, ClientError> {
        let group = request.group.clone();
        match self.group_call(&group, &Request::JoinGroup(request)).await? {
            Response::JoinGroup(answer) => assignment_result(answer, "join", &group),
            other => Err(unexpected("JoinGroup", &other)),
        }
    }

    /// Tells the coordinator the member is alive and works in `generation`;
    /// the answer is its assignment now. `UNKNOWN_MEMBER` (removed: rejoin)
    /// comes back as [`ClientError::Broker`].
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
    ) -> Result<GroupAssignment, ClientError> {
        let request = Request::Heartbeat(HeartbeatRequest {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
        });
        match self.group_call(group, &request).await? {
            Response::Heartbeat(answer) => assignment_result(answer, "heartbeat in", group),
            other => Err(unexpected("Heartbeat", &other)),
        }
    }

    /// Leaves a group at once; its partitions go to the other members
    /// without waiting for the session timeout.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        let request =
            Request::LeaveGroup(LeaveGroupRequest { group: group.to_owned(), member_id: member_id.to_owned() });
        match self.group_call(group, &request).await? {
            Response::LeaveGroup(result) => group_result(result, "leave"),
            other => Err(unexpected("LeaveGroup", &other)),
        }
    }

    /// Commits offsets ("next offset to consume") for partitions the member
    /// owns. A whole-request error (`UNKNOWN_MEMBER`, `STALE_GENERATION`) is
    /// returned as [`ClientError::Broker`]; per-partition results (e.g.
    /// `INVALID_COMMIT`) are in the response for the caller to inspect.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
        offsets: Vec<OffsetCommit>,
    ) -> Result<CommitOffsetsResponse, ClientError> {
        let request = Request::CommitOffsets(CommitOffsetsRequest {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
            offsets,
        });
        let response = match self.group_call(group, &request).await? {
            Response::CommitOffsets(response) => response,
            other => return Err(unexpected("CommitOffsets", &other)),
        };
        if !response.error.is_ok() {
            return Err(group_error(response.error, "commit offsets of", group));
        }
        Ok(response)
    }

    /// The group's committed offsets for `partitions` (`None`: every
    /// partition it has committed). `offset: None` means nothing committed.
    pub async fn fetch_committed(
        &self,
        group: &str,
        partitions: Option<Vec<TopicPartitions>>,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let request = Request::FetchCommitted(FetchCommittedRequest { group: group.to_owned(), partitions });
        let response = match self.group_call(group, &request).await? {
            Response::FetchCommitted(response) => response,
            other => return Err(unexpected("FetchCommitted", &other)),
        };
        if !response.error.is_ok() {
            return Err(group_error(response.error, "fetch committed offsets of", group));
        }
        Ok(response.offsets)
    }

    /// The group's state, members with their assignments, and committed
    /// offset, log end and lag per partition.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        let request = Request::DescribeGroup(DescribeGroupRequest { group: group.to_owned() });
        let response = match self.group_call(group, &request).await? {
            Response::DescribeGroup(response) => response,
            other => return Err(unexpected("DescribeGroup", &other)),
        };
        if !response.error.is_ok() {
            return Err(group_error(response.error, "describe", group));
        }
        Ok(response)
    }

    /// Every group of every shard (any shard answers for all).
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        match self.bootstrap_call(&Request::ListGroups).await? {
            Response::ListGroups(response) => Ok(response.groups),
            other => Err(unexpected("ListGroups", &other)),
        }
    }

    /// Moves the group's committed offsets of every partition of `topic` to
    /// `to`, backwards included. Only an empty group may be reset: one with
    /// members answers `GROUP_NOT_EMPTY`, returned as [`ClientError::Broker`].
    pub async fn reset_group(&self, group: &str, topic: &str, to: ResetTarget) -> Result<(), ClientError> {
        let request = Request::ResetGroup(ResetGroupRequest { group: group.to_owned(), topic: topic.to_owned(), to });
        match self.group_call(group, &request).await? {
            Response::ResetGroup(result) => group_result(result, "reset"),
            other => Err(unexpected("ResetGroup", &other)),
        }
    }

    /// Sends a group request to the group's coordinator. `NOT_COORDINATOR`
    /// (whether the whole request failed or the answer carries it) means the
    /// cached coordinator is wrong and nothing was done: find it again and
    /// retry once. A connection failure forgets the coordinator too, so the
    /// next call asks again (a restarted broker has new shard ports).
    async fn group_call(&self, group: &str, request: &Request) -> Result<Response, ClientError> {
        let mut refreshed = false;
        loop {
            let answer = match self.coordinator_connection(group).await {
                Ok(connection) => connection.call(request, &[]).await.map(|(response, _)| response),
                Err(error) => Err(error),
            };
            let code = match &answer {
                Ok(response) => embedded_group_error(response),
                Err(error) => error.code(),
            };
            if code == Some(ErrorCode::NOT_COORDINATOR) && !refreshed {
                refreshed = true;
                self.forget_coordinator(group);
                continue;
            }
            if matches!(&answer, Err(error) if error.code().is_none()) {
                self.forget_coordinator(group);
            }
            return answer;
        }
    }

    /// The connection to the group's coordinator: its own shard port when
    /// shard-aware (asking the broker once per group), else the bootstrap
    /// connection, which forwards.
    async fn coordinator_connection(&self, group: &str) -> Result<Connection, ClientError> {
        if !self.inner.options.shard_aware {
            return self.connection_to(self.inner.bootstrap).await;
        }
        let cached = self.inner.coordinators.borrow().get(group).copied();
        let addr = match cached {
            Some(addr) => addr,
            None => {
                let found = self.find_coordinator(group).await?;
                self.shard_addr(found.port)
            }
        };
        self.connection_to(addr).await
    }

    fn forget_coordinator(&self, group: &str) {
        self.inner.coordinators.borrow_mut().remove(group);
    }

    /// A shard's own address; port 0 (no shard ports) means the bootstrap one.
    fn shard_addr(&self, port: u16) -> SocketAddr {
        match port {
            0 => self.inner.bootstrap,
            port => SocketAddr::new(self.inner.bootstrap.ip(), port),
        }
    }

    async fn bootstrap_call(&self, request: &Request) -> Result<Response, ClientError> {
        let connection = self.connection_to(self.inner.bootstrap).await?;
        Ok(connection.call(request, &[]).await?.0)
    }

    async fn refresh_topic(&self, topic: &str) -> Result<(), ClientError> {
        self.metadata(Some(vec![topic.to_owned()])).await.map(drop)
    }

    /// The connection a partition's requests go to: its owner's shard port
    /// when shard-aware, else the bootstrap connection.
    pub(crate) async fn partition_connection(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Connection, ClientError> {
        if !self.inner.options.shard_aware {
            return self.connection_to(self.inner.bootstrap).await;
        }
        let route = self.inner.cache.borrow().route(self.inner.bootstrap, topic, partition);
        let addr = match route {
            Route::To(addr) => addr,
            Route::UnknownTopic | Route::NoSuchPartition(_) => {
                self.refresh_topic(topic).await?;
                let route = self.inner.cache.borrow().route(self.inner.bootstrap, topic, partition);
                match route {
                    Route::To(addr) => addr,
                    Route::UnknownTopic => return Err(ClientError::NoSuchTopic(topic.to_owned())),
                    Route::NoSuchPartition(count) => {
                        return Err(ClientError::InvalidArgument(format!(
                            "partition {partition} does not exist: topic {topic} has {count} partitions"
                        )))
                    }
                }
            }
        };
        self.connection_to(addr).await
    }

    /// The open connection to `addr`, connecting (again) if there is none or
    /// the last one closed.
    async fn connection_to(&self, addr: SocketAddr) -> Result<Connection, ClientError> {
        let existing = self.inner.connections.borrow().get(&addr).filter(|c| !c.is_closed()).cloned();
        if let Some(connection) = existing {
            return Ok(connection);
        }
        let connection = Connection::connect_with(addr, self.inner.options.connection_options()).await?;
        // Another task may have connected while this one waited: keep theirs
        // if it is still open, so each address has one connection.
        let mut connections = self.inner.connections.borrow_mut();
        match connections.get(&addr) {
            Some(theirs) if !theirs.is_closed() => Ok(theirs.clone()),
            _ => {
                connections.insert(addr, connection.clone());
                Ok(connection)
            }
        }
    }
}

/// Where the cache says a partition's requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    To(SocketAddr),
    UnknownTopic,
    /// The topic is known with this many partitions.
    NoSuchPartition(u32),
}

/// What the client knows of the cluster: each shard's own port and each
/// topic's partition owners. Plain data, so routing is testable without I/O.
#[derive(Debug, Default)]
struct MetadataCache {
    shard_ports: HashMap<ShardId, u16>,
    /// Owner of each partition, indexed by partition id. Looked up for
    /// every record a producer sends, so hashed with Fx rather than SipHash:
    /// topic names come from this application, not from the network.
    topics: FxHashMap<String, Vec<ShardId>>,
    /// Bumped by every change to `topics`.
    epoch: u64,
}

impl MetadataCache {
    /// Takes in a metadata response. `requested` is the topic list that was
    /// asked for (`None`: all topics, so topics missing from the answer are
    /// gone).
    fn apply(&mut self, requested: Option<&[String]>, response: &MetadataResponse) {
        self.epoch += 1;
        self.shard_ports = response.shards.iter().map(|endpoint| (endpoint.shard, endpoint.port)).collect();
        if requested.is_none() {
            self.topics.clear();
        }
        for topic in &response.topics {
            if !topic.error.is_ok() {
                self.topics.remove(&topic.name);
                continue;
            }
            match partition_owners(topic) {
                Some(owners) => {
                    self.topics.insert(topic.name.clone(), owners);
                }
                None => {
                    // Not a placement this client can route by: leaving it
                    // out makes requests for the topic fail with NoSuchTopic
                    // rather than go to a wrong shard.
                    tracing::warn!(topic = %topic.name, "metadata with partition ids other than 0..n ignored");
                    self.topics.remove(&topic.name);
                }
            }
        }
        if let Some(requested) = requested {
            for name in requested {
                if !response.topics.iter().any(|topic| &topic.name == name) {
                    self.topics.remove(name);
                }
            }
        }
    }

    fn forget(&mut self, topic: &str) {
        self.epoch += 1;
        self.topics.remove(topic);
    }

    fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).and_then(|owners| u32::try_from(owners.len()).ok())
    }

    fn route(&self, bootstrap: SocketAddr, topic: &str, partition: PartitionId) -> Route {
        let Some(owners) = self.topics.get(topic) else {
            return Route::UnknownTopic;
        };
        let Some(shard) = owners.get(partition.0 as usize) else {
            return Route::NoSuchPartition(u32::try_from(owners.len()).unwrap_or(u32::MAX));
        };
        match self.shard_ports.get(shard) {
            // Port 0: the broker has no per-shard ports; it forwards instead.
            Some(&port) if port != 0 => Route::To(SocketAddr::new(bootstrap.ip(), port)),
            _ => Route::To(bootstrap),
        }
    }
}

/// The owner of each partition, if the partition ids are exactly 0..n.
fn partition_owners(topic: &TopicMetadata) -> Option<Vec<ShardId>> {
    let mut owners = vec![None; topic.partitions.len()];
    for partition in &topic.partitions {
        let owner = owners.get_mut(partition.partition.0 as usize)?;
        if owner.replace(partition.shard).is_some() {
            return None;
        }
    }
    owners.into_iter().collect()
}

/// A partition's answer, with its error code.
trait PartitionAnswer {
    fn error(&self) -> ErrorCode;
}

impl PartitionAnswer for ProducePartitionResult {
    fn error(&self) -> ErrorCode {
        self.error
    }
}

impl PartitionAnswer for ListOffsetsResult {
    fn error(&self) -> ErrorCode {
        self.error
    }
}

impl PartitionAnswer for (FetchPartitionResult, Bytes) {
    fn error(&self) -> ErrorCode {
        self.0.error
    }
}

fn needs_refresh(code: ErrorCode) -> bool {
    code == ErrorCode::NOT_OWNER || code == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
}

fn partition_error(code: ErrorCode, action: &str, topic: &str, partition: PartitionId) -> ClientError {
    ClientError::broker(code, format!("{action} {topic}/{partition} failed: {}", code.name()))
}

fn topic_result(result: TopicResult) -> Result<(), ClientError> {
    if result.error.is_ok() {
        return Ok(());
    }
    let message = if result.message.is_empty() {
        format!("topic {}: {}", result.name, result.error.name())
    } else {
        result.message
    };
    Err(ClientError::broker(result.error, message))
}

/// The error code a group answer carries in its body, if any.
fn embedded_group_error(response: &Response) -> Option<ErrorCode> {
    let code = match response {
        Response::JoinGroup(answer) | Response::Heartbeat(answer) => answer.error,
        Response::LeaveGroup(result) | Response::ResetGroup(result) => result.error,
        Response::CommitOffsets(response) => response.error,
        Response::FetchCommitted(response) => response.error,
        Response::DescribeGroup(response) => response.error,
        _ => return None,
    };
    (!code.is_ok()).then_some(code)
}

fn group_error(code: ErrorCode, action: &str, group: &str) -> ClientError {
    ClientError::broker(code, format!("{action} group {group} failed: {}", code.name()))
}

fn assignment_result(answer: GroupAssignment, action: &str, group: &str) -> Result<GroupAssignment, ClientError> {
    if answer.error.is_ok() {
        Ok(answer)
    } else {
        Err(group_error(answer.error, action, group))
    }
}

fn group_result(result: GroupResult, action: &str) -> Result<(), ClientError> {
    if result.error.is_ok() {
        return Ok(());
    }
    let message = if result.message.is_empty() {
        format!("{action} group {} failed: {}", result.group, result.error.name())
    } else {
        result.message
    };
    Err(ClientError::broker(result.error, message))
}

/// A per-partition result in a response.
trait PartitionResult {
    fn is_for(&self, topic: &str, partition: PartitionId) -> bool;
}

impl PartitionResult for ProducePartitionResult {
    fn is_for(&self, topic: &str, partition: PartitionId) -> bool {
        self.topic == topic && self.partition == partition
    }
}

impl PartitionResult for ListOffsetsResult {
    fn is_for(&self, topic: &str, partition: PartitionId) -> bool {
        self.topic == topic && self.partition == partition
    }
}

/// The one result for the partition asked about.
fn only_partition<T: PartitionResult>(results: Vec<T>, topic: &str, partition: PartitionId) -> Result<T, ClientError> {
    results.into_iter().find(|result| result.is_for(topic, partition)).ok_or_else(|| {
        ClientError::UnexpectedResponse(format!("the response does not mention partition {topic}/{partition}"))
    })
}

/// Finds the partition's result and cuts its bytes out of the payload, which
/// holds every listed partition's data in list order.
fn fetched_partition(
    results: Vec<FetchPartitionResult>,
    payload: Bytes,
    topic: &str,
    partition: PartitionId,
) -> Result<(FetchPartitionResult, Bytes), ClientError> {
    let mut start = 0usize;
    for result in results {
        let len = result.bytes as usize;
        let end = start.checked_add(len).filter(|end| *end <= payload.len()).ok_or_else(|| {
            ClientError::UnexpectedResponse(format!(
                "fetch response declares more partition bytes than its {}-byte payload",
                payload.len()
            ))
        })?;
        if result.topic == topic && result.partition == partition {
            return Ok((result, payload.slice(start..end)));
        }
        start = end;
    }
    Err(ClientError::UnexpectedResponse(format!("the fetch response does not mention partition {topic}/{partition}")))
}

/// Describes a response by its variant only: a fetch payload or a large
/// metadata answer does not belong in an error message.
pub(crate) fn unexpected(expected: &str, got: &Response) -> ClientError {
    let name = match got {
        Response::Pong => "Pong",
        Response::Metadata(_) => "Metadata",
        Response::CreateTopic(_) => "CreateTopic",
        Response::DeleteTopic(_) => "DeleteTopic",
        Response::Produce(_) => "Produce",
        Response::Fetch(_) => "Fetch",
        Response::ListOffsets(_) => "ListOffsets",
        Response::Stats(_) => "Stats",
        Response::FindCoordinator(_) => "FindCoordinator",
        Response::JoinGroup(_) => "JoinGroup",
        Response::Heartbeat(_) => "Heartbeat",
        Response::LeaveGroup(_) => "LeaveGroup",
        Response::CommitOffsets(_) => "CommitOffsets",
        Response::FetchCommitted(_) => "FetchCommitted",
        Response::DescribeGroup(_) => "DescribeGroup",
        Response::ListGroups(_) => "ListGroups",
        Response::ResetGroup(_) => "ResetGroup",
        Response::Error(_) => "Error",
        Response::InitProducerId(_) => "InitProducerId",
        Response::DescribeConfigs(_) => "DescribeConfigs",
        Response::AlterConfigs(_) => "AlterConfigs",
        Response::DeleteRecords(_) => "DeleteRecords",
        Response::SaslAuthenticate(_) => "SaslAuthenticate",
        Response::AlterCredentials(_) => "AlterCredentials",
        Response::DescribeCredentials(_) => "DescribeCredentials",
        Response::AlterAcls(_) => "AlterAcls",
        Response::DescribeAcls(_) => "DescribeAcls",
    };
    ClientError::UnexpectedResponse(format!("expected a {expected} response, got {name}"))
}

/// A duration in whole milliseconds for the wire, saturating.
pub(crate) fn duration_ms(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake_broker::{executor, FakeBroker};
    use crate::protocol::wire::{PartitionMetadata, ShardEndpoint};

    fn topic(name: &str, owners: &[u16]) -> TopicMetadata {
        let partitions = owners
            .iter()
            .enumerate()
            .map(|(index, shard)| PartitionMetadata { partition: PartitionId(index as u32), shard: ShardId(*shard) })
            .collect();
        TopicMetadata { name: name.into(), error: ErrorCode::NONE, partitions }
    }

    #[test]
    fn the_cache_routes_partitions_to_their_shard_ports() {
        let bootstrap: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        let shards =
            vec![ShardEndpoint { shard: ShardId(0), port: 9100 }, ShardEndpoint { shard: ShardId(1), port: 0 }];
        let response = MetadataResponse { shards, topics: vec![topic("orders", &[0, 1, 0])] };
        let mut cache = MetadataCache::default();
        cache.apply(None, &response);
        assert_eq!(cache.partition_count("orders"), Some(3));
        assert_eq!(cache.route(bootstrap, "orders", PartitionId(0)), Route::To("10.0.0.1:9100".parse().unwrap()));
        // Port 0 means no shard port: the bootstrap connection forwards.
        assert_eq!(cache.route(bootstrap, "orders", PartitionId(1)), Route::To(bootstrap));
        assert_eq!(cache.route(bootstrap, "orders", PartitionId(3)), Route::NoSuchPartition(3));
        assert_eq!(cache.route(bootstrap, "other", PartitionId(0)), Route::UnknownTopic);

        // Asking for a topic the broker no longer has forgets it.
        // (Every change moves the epoch: producers keep counts per epoch.)
        let epoch = cache.epoch;
        let gone = MetadataResponse { shards: response.shards.clone(), topics: vec![] };
        cache.apply(Some(&["orders".to_string()]), &gone);
        assert_eq!(cache.partition_count("orders"), None);
        assert_ne!(cache.epoch, epoch);
        let epoch = cache.epoch;
        cache.forget("orders");
        assert_ne!(cache.epoch, epoch);

        // Partition ids that are not exactly 0..n are not routable.
        let mut odd = topic("odd", &[0, 1]);
        odd.partitions[1].partition = PartitionId(5);
        cache.apply(None, &MetadataResponse { shards: vec![], topics: vec![odd] });
        assert_eq!(cache.partition_count("odd"), None);
    }

    #[test]
    fn fetch_payloads_are_cut_per_partition_and_checked() {
        let result = |name: &str, partition: u32, bytes: u32| FetchPartitionResult {
            topic: name.into(),
            partition: PartitionId(partition),
            error: ErrorCode::NONE,
            high_watermark: Offset::ZERO,
            log_start: Offset::ZERO,
            bytes,
        };
        let payload = Bytes::from_static(b"aaabbbbb");
        let (found, data) =
            fetched_partition(vec![result("t", 0, 3), result("t", 1, 5)], payload.clone(), "t", PartitionId(1))
                .unwrap();
        assert_eq!((found.partition, &data[..]), (PartitionId(1), &b"bbbbb"[..]));
        let overlong = fetched_partition(vec![result("t", 0, 9)], payload.clone(), "t", PartitionId(0));
        assert!(matches!(overlong, Err(ClientError::UnexpectedResponse(_))));
        let missing = fetched_partition(vec![result("t", 0, 3)], payload, "t", PartitionId(1));
        assert!(matches!(missing, Err(ClientError::UnexpectedResponse(_))));
    }

    #[test]
    fn partition_requests_follow_metadata_and_retry_once_after_not_owner() {
        executor().run(async {
            let broker = FakeBroker::start(&[("orders", 2)]);
            let client = Client::connect(broker.addr(), ClientOptions::default()).await.unwrap();
            client.ping().await.unwrap();
            assert_eq!(client.partitions("orders").await.unwrap(), 2);
            assert!(matches!(client.partitions("missing").await, Err(ClientError::NoSuchTopic(_))));
            // The broker answers NOT_OWNER once: the client refreshes and retries.
            broker.fail_next_produce(ErrorCode::NOT_OWNER);
            let batch = crate::client::fake_broker::batch_of(3);
            let result = client.produce_raw("orders", PartitionId(1), &batch, AckLevel::Durable).await.unwrap();
            assert_eq!((result.base_offset.get(), result.next_offset.get()), (0, 3));
            broker.fail_next_produce(ErrorCode::INVALID_BATCH);
            let error = client.produce_raw("orders", PartitionId(1), &batch, AckLevel::Durable).await.unwrap_err();
            assert_eq!(error.code(), Some(ErrorCode::INVALID_BATCH));
            let (fetched, data) = client.fetch("orders", PartitionId(1), Offset::ZERO, 1 << 20, 10).await.unwrap();
            assert_eq!(fetched.high_watermark.get(), 3);
            assert_eq!(&data[..], &batch[..]);
            let latest = client.list_offsets("orders", PartitionId(1), OffsetSpec::Latest).await.unwrap();
            assert_eq!(latest.map(Offset::get), Some(3));
            let bad = client.produce_raw("orders", PartitionId(7), &batch, AckLevel::Durable).await;
            assert!(matches!(bad, Err(ClientError::InvalidArgument(_))), "{bad:?}");
            assert!(broker.metadata_requests() >= 2);
            // Shard-aware: produce requests went to the shard's own port.
            let (bootstrap_port, shard_port) = (broker.addr().port(), broker.shard_port());
            assert_eq!(broker.produce_requests_on(bootstrap_port), 0);
            assert_eq!(broker.produce_requests_on(shard_port), 3);

            // Not shard-aware: everything goes to the bootstrap port.
            let options = ClientOptions { shard_aware: false, ..ClientOptions::default() };
            let simple = Client::connect(broker.addr(), options).await.unwrap();
            simple.produce_raw("orders", PartitionId(0), &batch, AckLevel::Written).await.unwrap();
            assert_eq!(broker.produce_requests_on(bootstrap_port), 1);
            assert_eq!(broker.produce_requests_on(shard_port), 3);
        });
    }
}
