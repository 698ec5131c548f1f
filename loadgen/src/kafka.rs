//! loadgen's own small Kafka client, so that `--protocol kafka` measures the
//! broker's Kafka front door with the same producer, consumers and checks as
//! a native run: [`KafkaClient`] implements `ringbroker::client::Transport`,
//! and the library's `Producer` and `PartitionConsumer` run over it.
//!
//! Messages are encoded and decoded by the `kafka-protocol` crate. The
//! connection is written here because no Kafka client runs on glommio: a
//! TCP connection per broker (and one more per consumer for its fetches,
//! see [`KafkaClient`]), requests pipelined (a caller writes its frame
//! under a lock, one at a time), and a reader task that completes the calls
//! in order, since Kafka answers a connection's requests in the order they
//! came. It speaks what loadgen needs (Metadata, Produce, Fetch,
//! ListOffsets) at fixed versions the broker serves, and routes each
//! partition to the leader the metadata names: in per-shard mode that is the
//! owning shard's own port, in node mode the one advertised broker.
//!
//! Bounds: calls in flight per connection are capped by a semaphore, and a
//! response longer than [`MAX_FRAME_BYTES`] closes the connection before
//! anything is reserved for it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ringbroker::client::{ClientError, Transport};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::{ErrorCode, FetchPartitionResult, OffsetSpec, ProducerIdentity};
use rustc_hash::FxHashMap;

/// The versions loadgen speaks: the newest the broker serves of each.
const METADATA_VERSION: i16 = 12;
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;
/// The newest that asks for one coordinator.
const FIND_COORDINATOR_VERSION: i16 = 3;
const INIT_PRODUCER_ID_VERSION: i16 = 4;

/// Largest response accepted: a fetch of loadgen's largest size plus room.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Calls in flight on one connection (the producer's own cap is lower).
const MAX_IN_FLIGHT: u64 = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits beyond the time the broker may hold it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The reader asks the socket for at least this much at once.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// The writer keeps its buffer between writes up to this size.
const WRITE_BUFFER_RETAIN_BYTES: usize = 4 << 20;

/// Kafka's error codes that loadgen acts on (Kafka's numbers).
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// A connection of a group member's own to its group's coordinator. The
/// broker holds a JoinGroup until the whole group has joined; on the
/// shared connection that would hold up every produce and fetch pipelined
/// behind it, since answers come in order.
#[derive(Clone, Debug)]
pub struct CoordinatorLink {
    connection: Connection,
}

impl CoordinatorLink {
    /// Sends `request` and decodes its answer; `held`: how long the broker
    /// may hold it before answering.
    pub async fn call<R: Encodable, T: Decodable>(
        &self,
        api_key: ApiKey,
        version: i16,
        request: &R,
        held: Duration,
    ) -> Result<T, ClientError> {
        decode(self.connection.call(api_key, version, request, held).await?, version)
    }
}

/// A client of one Kafka cluster, on one executor; cheap to clone.
///
/// Fetches go over connections of their own (a "fetch lane"): Kafka
/// answers a connection's requests in order, so a fetch the broker holds
/// while it waits for data would hold up every produce queued behind it.
/// Real deployments get the same split from separate producer and consumer
/// clients. [`KafkaClient::with_own_fetch_lane`] gives a consumer a lane of
/// its own, so one consumer's long-poll does not delay another's data.
#[derive(Clone, Debug)]
pub struct KafkaClient {
    inner: Rc<Inner>,
    fetch_lane: u32,
}

/// The connections everything but fetches uses.
const REQUEST_LANE: u32 = 0;

#[derive(Debug)]
struct Inner {
    bootstrap: SocketAddr,
    /// Node id to address, from the last metadata answer.
    brokers: RefCell<FxHashMap<i32, SocketAddr>>,
    /// Per topic, the leader node of each partition.
    leaders: RefCell<FxHashMap<String, Rc<[i32]>>>,
    /// Bumped by every change to `leaders` (see `Transport::metadata_epoch`).
    epoch: Cell<u64>,
    /// By broker and lane.
    connections: RefCell<FxHashMap<(SocketAddr, u32), Connection>>,
    /// The last fetch lane handed out.
    lanes: Cell<u32>,
}

impl KafkaClient {
    /// Connects to the bootstrap broker (checking it answers Metadata).
    pub async fn connect(bootstrap: SocketAddr) -> Result<KafkaClient, ClientError> {
        let client = KafkaClient {
            inner: Rc::new(Inner {
                bootstrap,
                brokers: RefCell::default(),
                leaders: RefCell::default(),
                epoch: Cell::new(0),
                connections: RefCell::default(),
                lanes: Cell::new(REQUEST_LANE + 1),
            }),
            fetch_lane: REQUEST_LANE + 1,
        };
        client.metadata(None).await?;
        Ok(client)
    }

    /// This client, fetching over connections of its own.
    pub fn with_own_fetch_lane(&self) -> KafkaClient {
        let lane = self.inner.lanes.get() + 1;
        self.inner.lanes.set(lane);
        KafkaClient { inner: Rc::clone(&self.inner), fetch_lane: lane }
    }

    async fn connection_to(&self, addr: SocketAddr, lane: u32) -> Result<Connection, ClientError> {
        let key = (addr, lane);
        if let Some(connection) = self.inner.connections.borrow().get(&key).filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = Connection::connect(addr).await?;
        let mut connections = self.inner.connections.borrow_mut();
        // Another task may have connected meanwhile: keep one.
        let kept = connections.entry(key).or_insert_with(|| connection.clone());
        if kept.is_closed() {
            *kept = connection;
        }
        Ok(kept.clone())
    }

    /// Finds `group`'s coordinator and opens a connection of its own to it.
    pub async fn coordinator(&self, group: &str) -> Result<CoordinatorLink, ClientError> {
        let request = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_owned()));
        let connection = self.connection_to(self.inner.bootstrap, REQUEST_LANE).await?;
        let body = connection.call(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION, &request, Duration::ZERO).await?;
        let response: FindCoordinatorResponse = decode(body, FIND_COORDINATOR_VERSION)?;
        if response.error_code != 0 {
            return Err(kafka_error(response.error_code, &format!("finding the coordinator of group {group}")));
        }
        let addr = resolve(&response.host, response.port)?;
        Ok(CoordinatorLink { connection: Connection::connect(addr).await? })
    }

    /// Asks the bootstrap broker for the brokers and `topic`'s leaders.
    async fn metadata(&self, topic: Option<&str>) -> Result<(), ClientError> {
        let topics = topic.map(|topic| vec![MetadataRequestTopic::default().with_name(Some(topic_name(topic)))]);
        let request = MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false);
        let connection = self.connection_to(self.inner.bootstrap, REQUEST_LANE).await?;
        let body = connection.call(ApiKey::Metadata, METADATA_VERSION, &request, Duration::ZERO).await?;
        let response: MetadataResponse = decode(body, METADATA_VERSION)?;
        let mut brokers = FxHashMap::default();
        for broker in &response.brokers {
            brokers.insert(broker.node_id.0, resolve(&broker.host, broker.port)?);
        }
        *self.inner.brokers.borrow_mut() = brokers;
        for metadata in response.topics {
            let Some(name) = metadata.name else { continue };
            if metadata.error_code == UNKNOWN_TOPIC_OR_PARTITION {
                self.leaders_mut().remove(name.0.as_str());
                continue;
            }
            if metadata.error_code != 0 {
                return Err(kafka_error(metadata.error_code, &format!("metadata of {}", name.0)));
            }
            let count = metadata.partitions.iter().map(|p| p.partition_index.max(0) as usize + 1).max().unwrap_or(0);
            let mut leaders = vec![-1; count];
            for partition in &metadata.partitions {
                leaders[partition.partition_index.max(0) as usize] = partition.leader_id.0;
            }
            self.leaders_mut().insert(name.0.to_string(), leaders.into());
        }
        Ok(())
    }

    /// The connection to the partition's leader, asking for metadata once
    /// if it is not known.
    async fn leader(&self, topic: &str, partition: PartitionId, lane: u32) -> Result<Connection, ClientError> {
        if self.leader_addr(topic, partition).is_none() {
            self.metadata(Some(topic)).await?;
        }
        match self.leader_addr(topic, partition) {
            Some(addr) => self.connection_to(addr, lane).await,
            None if self.inner.leaders.borrow().contains_key(topic) => {
                Err(ClientError::InvalidArgument(format!("{topic} has no partition {partition} with a leader")))
            }
            None => Err(ClientError::NoSuchTopic(topic.to_owned())),
        }
    }

    fn leader_addr(&self, topic: &str, partition: PartitionId) -> Option<SocketAddr> {
        let node = *self.inner.leaders.borrow().get(topic)?.get(partition.0 as usize)?;
        self.inner.brokers.borrow().get(&node).copied()
    }

    /// Forgets where `topic` is led, after an answer saying it moved.
    fn forget(&self, topic: &str) {
        self.leaders_mut().remove(topic);
    }

    /// The leaders, to change: every change moves the metadata epoch.
    fn leaders_mut(&self) -> std::cell::RefMut<'_, FxHashMap<String, Rc<[i32]>>> {
        self.inner.epoch.set(self.inner.epoch.get() + 1);
        self.inner.leaders.borrow_mut()
    }

    /// Runs `call` against the partition's leader; a "not the leader" or
    /// "unknown partition" answer refreshes the metadata and tries once more.
    async fn on_leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: PartitionId,
        lane: u32,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, i16>, ClientError>>,
    {
        let mut refreshed = false;
        loop {
            match call(self.leader(topic, partition, lane).await?).await? {
                Ok(answer) => return Ok(answer),
                Err(code) if !refreshed && matches!(code, NOT_LEADER_OR_FOLLOWER | UNKNOWN_TOPIC_OR_PARTITION) => {
                    refreshed = true;
                    self.forget(topic);
                }
                Err(code) => return Err(kafka_error(code, &format!("{topic}/{partition}"))),
            }
        }
    }
}

impl Transport for KafkaClient {
    fn max_frame_bytes(&self) -> usize {
        MAX_FRAME_BYTES
    }

    fn cached_partitions(&self, topic: &str) -> Option<u32> {
        self.inner.leaders.borrow().get(topic).map(|leaders| leaders.len() as u32)
    }

    fn metadata_epoch(&self) -> u64 {
        self.inner.epoch.get()
    }

    async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(count) = self.cached_partitions(topic) {
            return Ok(count);
        }
        self.metadata(Some(topic)).await?;
        self.cached_partitions(topic).ok_or_else(|| ClientError::NoSuchTopic(topic.to_owned()))
    }

    async fn prepare_route(&self, topic: &str, partition: PartitionId) -> Result<(), ClientError> {
        self.leader(topic, partition, REQUEST_LANE).await.map(drop)
    }

    async fn produce_batches(
        &self,
        topic: &str,
        partition: PartitionId,
        batches: &[u8],
        acks: AckLevel,
        timeout_ms: u32,
    ) -> Result<Offset, ClientError> {
        let acks_code = match acks {
            AckLevel::None => 0,
            AckLevel::Written => 1,
            AckLevel::Durable => -1,
        };
        let records = Bytes::copy_from_slice(batches);
        let request = ProduceRequest::default()
            .with_acks(acks_code)
            .with_timeout_ms(i32::try_from(timeout_ms).unwrap_or(i32::MAX))
            .with_topic_data(vec![TopicProduceData::default().with_name(topic_name(topic)).with_partition_data(vec![
                PartitionProduceData::default().with_index(partition.0 as i32).with_records(Some(records)),
            ])]);
        let wait = Duration::from_millis(u64::from(timeout_ms));
        self.on_leader(topic, partition, REQUEST_LANE, |connection| {
            let request = &request;
            async move {
                if acks == AckLevel::None {
                    connection.send_only(ApiKey::Produce, PRODUCE_VERSION, request).await?;
                    return Ok(Ok(Offset::ZERO));
                }
                let body = connection.call(ApiKey::Produce, PRODUCE_VERSION, request, wait).await?;
                let response: ProduceResponse = decode(body, PRODUCE_VERSION)?;
                let answer =
                    response.responses.first().and_then(|topic| topic.partition_responses.first()).ok_or_else(
                        || ClientError::UnexpectedResponse("a produce response without the partition".into()),
                    )?;
                Ok(match answer.error_code {
                    0 => Ok(offset(answer.base_offset)?),
                    code => Err(code),
                })
            }
        })
        .await
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset_from: Offset,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(FetchPartitionResult, Bytes), ClientError> {
        let max_bytes = i32::try_from(max_bytes).unwrap_or(i32::MAX);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(i32::try_from(max_wait_ms).unwrap_or(i32::MAX))
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(vec![
                FetchPartition::default()
                    .with_partition(partition.0 as i32)
                    .with_fetch_offset(offset_from.to_wire())
                    .with_partition_max_bytes(max_bytes),
            ])]);
        let wait = Duration::from_millis(u64::from(max_wait_ms));
        self.on_leader(topic, partition, self.fetch_lane, |connection| {
            let request = &request;
            async move {
                let body = connection.call(ApiKey::Fetch, FETCH_VERSION, request, wait).await?;
                let response: FetchResponse = decode(body, FETCH_VERSION)?;
                if response.error_code != 0 {
                    return Ok(Err(response.error_code));
                }
                let answer = response
                    .responses
                    .into_iter()
                    .next()
                    .and_then(|topic| topic.partitions.into_iter().next())
                    .ok_or_else(|| ClientError::UnexpectedResponse("a fetch response without the partition".into()))?;
                if answer.error_code != 0 {
                    return Ok(Err(answer.error_code));
                }
                let records = answer.records.unwrap_or_default();
                let result = FetchPartitionResult {
                    topic: topic.to_owned(),
                    partition,
                    error: ErrorCode::NONE,
                    high_watermark: offset(answer.high_watermark)?,
                    log_start: offset(answer.log_start_offset.max(0))?,
                    bytes: u32::try_from(records.len()).unwrap_or(u32::MAX),
                };
                Ok(Ok((result, records)))
            }
        })
        .await
    }

    async fn list_offsets(
        &self,
        topic: &str,
        partition: PartitionId,
        spec: OffsetSpec,
    ) -> Result<Option<Offset>, ClientError> {
        let timestamp = match spec {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(at) => at,
        };
        let request =
            ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition.0 as i32)
                    .with_timestamp(timestamp)])]);
        self.on_leader(topic, partition, REQUEST_LANE, |connection| {
            let request = &request;
            async move {
                let body = connection.call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, request, Duration::ZERO).await?;
                let response: ListOffsetsResponse = decode(body, LIST_OFFSETS_VERSION)?;
                let answer = response.topics.first().and_then(|topic| topic.partitions.first()).ok_or_else(|| {
                    ClientError::UnexpectedResponse("a list-offsets answer without the partition".into())
                })?;
                Ok(match answer.error_code {
                    // -1: no record at or after the timestamp.
                    0 if answer.offset < 0 => Ok(None),
                    0 => Ok(Some(offset(answer.offset)?)),
                    code => Err(code),
                })
            }
        })
        .await
    }

    async fn init_producer_id(&self) -> Result<ProducerIdentity, ClientError> {
        let request = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
        let connection = self.connection_to(self.inner.bootstrap, REQUEST_LANE).await?;
        let body = connection.call(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION, &request, Duration::ZERO).await?;
        let response: InitProducerIdResponse = decode(body, INIT_PRODUCER_ID_VERSION)?;
        if response.error_code != 0 {
            return Err(kafka_error(response.error_code, "InitProducerId"));
        }
        Ok(ProducerIdentity { producer_id: response.producer_id.0, epoch: response.producer_epoch })
    }
}

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn offset(value: i64) -> Result<Offset, ClientError> {
    Offset::from_wire(value).ok_or_else(|| ClientError::UnexpectedResponse(format!("offset {value} out of range")))
}

fn decode<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, ClientError> {
    T::decode(&mut body, version).map_err(|error| ClientError::UnexpectedResponse(format!("undecodable: {error}")))
}

/// An advertised host and port as an address (hosts are IPv4 addresses in
/// ringbroker's answers; a name is resolved, which blocks, once per answer).
fn resolve(host: &str, port: i32) -> Result<SocketAddr, ClientError> {
    let port = u16::try_from(port)
        .map_err(|_| ClientError::UnexpectedResponse(format!("advertised port {port} out of range")))?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(ClientError::Io)?
        .next()
        .ok_or_else(|| ClientError::UnexpectedResponse(format!("advertised host {host} does not resolve")))
}

/// A Kafka error code as the client error loadgen reports.
pub fn kafka_error(code: i16, what: &str) -> ClientError {
    let native = match code {
        1 => ErrorCode::OFFSET_OUT_OF_RANGE,
        2 => ErrorCode::INVALID_BATCH,
        UNKNOWN_TOPIC_OR_PARTITION => ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        NOT_LEADER_OR_FOLLOWER => ErrorCode::NOT_OWNER,
        7 => ErrorCode::TIMEOUT,
        10 => ErrorCode::BATCH_TOO_LARGE,
        15 | 16 => ErrorCode::NOT_COORDINATOR,
        22 => ErrorCode::STALE_GENERATION,
        24 => ErrorCode::INVALID_GROUP,
        25 => ErrorCode::UNKNOWN_MEMBER,
        35 => ErrorCode::UNSUPPORTED_VERSION,
        42 => ErrorCode::INVALID_REQUEST,
        56 => ErrorCode::PARTITION_FAILED,
        _ => ErrorCode::INTERNAL,
    };
    ClientError::Broker { code: native, message: format!("{what}: Kafka error code {code}") }
}

/// One pipelined connection; the socket closes when the last clone goes.
#[derive(Clone, Debug)]
struct Connection {
    handle: Rc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Rc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(ClientError::Closed);
    }
}

struct Shared {
    peer: SocketAddr,
    /// Borrowed only inside one `poll_read` or `poll_write`.
    stream: RefCell<TcpStream>,
    in_flight: Semaphore,
    state: RefCell<State>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.peer).finish_non_exhaustive()
    }
}

struct State {
    next_correlation_id: i32,
    /// Frames encoded by callers, not yet taken by the writer: requests go
    /// out in the order they were made, several per write when busy.
    pending: Vec<u8>,
    /// The write number the bytes in `pending` will go out in.
    pending_generation: u64,
    /// Every write numbered up to this one has completed.
    written_generation: u64,
    /// Calls waiting for their response, in the order their requests were
    /// queued: the order Kafka answers in.
    waiting: VecDeque<Waiting>,
    writer: Option<Waker>,
    write_waiters: Vec<Waker>,
    /// The reader, parked on the socket.
    reader: Option<Waker>,
    closed: Option<ClientError>,
}

struct Waiting {
    correlation_id: i32,
    header_version: i16,
    slot: Rc<RefCell<Slot>>,
}

enum Slot {
    Pending(Option<Waker>),
    Done(Result<Bytes, ClientError>),
}

impl Connection {
    async fn connect(addr: SocketAddr) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await.map_err(|error| {
            let error = io::Error::from(error);
            if error.kind() == io::ErrorKind::TimedOut {
                ClientError::Timeout
            } else {
                ClientError::Io(error)
            }
        })?;
        stream.set_nodelay(true).map_err(io::Error::from)?;
        let shared = Rc::new(Shared {
            peer: addr,
            stream: RefCell::new(stream),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            state: RefCell::new(State {
                next_correlation_id: 0,
                pending: Vec::new(),
                pending_generation: 1,
                written_generation: 0,
                waiting: VecDeque::new(),
                writer: None,
                write_waiters: Vec::new(),
                reader: None,
                closed: None,
            }),
        });
        glommio::spawn_local(read_loop(Rc::clone(&shared))).detach();
        glommio::spawn_local(write_loop(Rc::clone(&shared))).detach();
        Ok(Connection { handle: Rc::new(Handle { shared }) })
    }

    fn is_closed(&self) -> bool {
        self.handle.shared.state.borrow().closed.is_some()
    }

    /// Sends a request and returns the response body (after its header).
    /// `held`: how long the broker may hold it (long-poll, durable acks),
    /// added to the request timeout.
    async fn call<R: Encodable>(
        &self,
        api_key: ApiKey,
        version: i16,
        request: &R,
        held: Duration,
    ) -> Result<Bytes, ClientError> {
        let shared = &self.handle.shared;
        let exchange = async {
            let _slot = shared.in_flight.acquire_permit(1).await.map_err(|_| shared.close_reason())?;
            let slot = Rc::new(RefCell::new(Slot::Pending(None)));
            shared.enqueue(api_key, version, request, Some(Rc::clone(&slot)))?;
            poll_fn(|cx| match &mut *slot.borrow_mut() {
                Slot::Pending(waker) => {
                    *waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                Slot::Done(result) => Poll::Ready(std::mem::replace(result, Err(ClientError::Closed))),
            })
            .await
        };
        futures_lite::future::or(exchange, async {
            glommio::timer::sleep(REQUEST_TIMEOUT + held).await;
            Err(ClientError::Timeout)
        })
        .await
    }

    /// Sends a request that gets no answer (produce with acks 0); returns
    /// once it is written, so a fast sender keeps the socket's pace.
    async fn send_only<R: Encodable>(&self, api_key: ApiKey, version: i16, request: &R) -> Result<(), ClientError> {
        let shared = &self.handle.shared;
        let send = async {
            let _slot = shared.in_flight.acquire_permit(1).await.map_err(|_| shared.close_reason())?;
            let generation = shared.enqueue(api_key, version, request, None)?;
            poll_fn(|cx| shared.poll_written(generation, cx)).await
        };
        futures_lite::future::or(send, async {
            glommio::timer::sleep(REQUEST_TIMEOUT).await;
            Err(ClientError::Timeout)
        })
        .await
    }
}

impl Shared {
    fn close_reason(&self) -> ClientError {
        self.state.borrow().closed.clone().unwrap_or(ClientError::Closed)
    }

    /// Encodes a request frame (length, header, body) into the pending
    /// buffer and, if it expects an answer, queues `slot` for it; returns
    /// the write number it goes out in. Synchronous, so requests go out
    /// in the order they are made.
    fn enqueue<R: Encodable>(
        &self,
        api_key: ApiKey,
        version: i16,
        request: &R,
        slot: Option<Rc<RefCell<Slot>>>,
    ) -> Result<u64, ClientError> {
        let mut state = self.state.borrow_mut();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        let correlation_id = state.next_correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("loadgen")));
        let start = state.pending.len();
        let pending = &mut state.pending;
        pending.extend_from_slice(&[0; 4]);
        let encoded = header
            .encode(pending, api_key.request_header_version(version))
            .and_then(|()| request.encode(pending, version));
        let len = pending.len() - start - 4;
        let problem = match encoded {
            Err(error) => Some(format!("encoding {api_key:?} v{version}: {error}")),
            Ok(()) if len > MAX_FRAME_BYTES => Some(format!("a {len}-byte request exceeds {MAX_FRAME_BYTES} bytes")),
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            // Only this frame goes; those queued before it stay whole.
            pending.truncate(start);
            return Err(ClientError::InvalidArgument(problem));
        }
        pending[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        state.next_correlation_id = correlation_id.wrapping_add(1);
        if let Some(slot) = slot {
            state.waiting.push_back(Waiting {
                correlation_id,
                header_version: api_key.response_header_version(version),
                slot,
            });
        }
        let generation = state.pending_generation;
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(generation)
    }

    fn poll_written(&self, generation: u64, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let mut state = self.state.borrow_mut();
        if state.written_generation >= generation {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = &state.closed {
            return Poll::Ready(Err(reason.clone()));
        }
        state.write_waiters.push(cx.waker().clone());
        Poll::Pending
    }

    /// Hands the writer everything pending (swapping buffers), or `None`
    /// once the connection is closed.
    fn poll_take_pending(&self, out: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let mut state = self.state.borrow_mut();
        if state.closed.is_some() {
            return Poll::Ready(None);
        }
        if state.pending.is_empty() {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        std::mem::swap(out, &mut state.pending);
        let generation = state.pending_generation;
        state.pending_generation += 1;
        Poll::Ready(Some(generation))
    }

    fn mark_written(&self, generation: u64) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            state.written_generation = generation;
            std::mem::take(&mut state.write_waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    fn poll_read_into(&self, buf: &mut [u8], cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.state.borrow().closed.is_some() {
            return Poll::Ready(Ok(0));
        }
        let polled = Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf);
        if polled.is_pending() {
            self.state.borrow_mut().reader = Some(cx.waker().clone());
        }
        polled
    }

    /// Completes the oldest waiting call with a response frame.
    fn deliver(&self, mut frame: Bytes) -> Result<(), ClientError> {
        let Some(waiting) = self.state.borrow_mut().waiting.pop_front() else {
            return Err(ClientError::UnexpectedResponse("a response to no request".into()));
        };
        let header = ResponseHeader::decode(&mut frame, waiting.header_version)
            .map_err(|error| ClientError::UnexpectedResponse(format!("response header: {error}")))?;
        if header.correlation_id != waiting.correlation_id {
            let (got, expected) = (header.correlation_id, waiting.correlation_id);
            return Err(ClientError::UnexpectedResponse(format!("correlation id {got}, expected {expected}")));
        }
        let previous = std::mem::replace(&mut *waiting.slot.borrow_mut(), Slot::Done(Ok(frame)));
        if let Slot::Pending(Some(waker)) = previous {
            waker.wake();
        }
        Ok(())
    }

    /// Fails everything waiting with `reason` and stops both tasks; the
    /// first reason sticks.
    fn close(&self, reason: ClientError) {
        let (waiting, wakers) = {
            let mut state = self.state.borrow_mut();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.clone());
            state.pending = Vec::new();
            let mut wakers = std::mem::take(&mut state.write_waiters);
            wakers.extend(state.writer.take());
            wakers.extend(state.reader.take());
            (std::mem::take(&mut state.waiting), wakers)
        };
        self.in_flight.close();
        for waiting in waiting {
            let previous = std::mem::replace(&mut *waiting.slot.borrow_mut(), Slot::Done(Err(reason.clone())));
            if let Slot::Pending(Some(waker)) = previous {
                waker.wake();
            }
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The stream's write half: borrows the stream for one poll at a time.
struct WriteHalf<'a>(&'a RefCell<TcpStream>);

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Writes what callers queued, one write per batch of frames.
async fn write_loop(shared: Rc<Shared>) {
    let mut out = Vec::new();
    while let Some(generation) = poll_fn(|cx| shared.poll_take_pending(&mut out, cx)).await {
        if let Err(error) = WriteHalf(&shared.stream).write_all(&out).await {
            shared.close(ClientError::Io(error));
            return;
        }
        out.clear();
        out.shrink_to(WRITE_BUFFER_RETAIN_BYTES);
        shared.mark_written(generation);
    }
}

/// Cuts response frames out of what the socket delivers, until the
/// connection closes or breaks the protocol.
async fn read_loop(shared: Rc<Shared>) {
    let reason = read_frames(&shared).await.err().unwrap_or(ClientError::Closed);
    shared.close(reason);
}

async fn read_frames(shared: &Shared) -> Result<(), ClientError> {
    // `buf[..filled]` holds bytes read; the rest of `buf` is zeroed room
    // to read into, kept between reads so no byte is zeroed twice.
    let mut buf = BytesMut::new();
    let mut filled = 0;
    loop {
        // Whole frames first.
        let need = loop {
            if filled < 4 {
                break 4;
            }
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_FRAME_BYTES {
                return Err(ClientError::UnexpectedResponse(format!("a {len}-byte response frame")));
            }
            if filled < 4 + len {
                break 4 + len;
            }
            let frame = buf.split_to(4 + len).freeze().slice(4..);
            filled -= 4 + len;
            shared.deliver(frame)?;
        };
        // Then read at least the rest of the frame under way, straight
        // into its place.
        let room = need.max(filled + READ_CHUNK_BYTES);
        if buf.len() < room {
            buf.resize(room, 0);
        }
        match poll_fn(|cx| shared.poll_read_into(&mut buf[filled..], cx)).await {
            Ok(0) => return Ok(()),
            Ok(read) => filled += read,
            Err(error) => return Err(ClientError::Io(error)),
        }
    }
}
