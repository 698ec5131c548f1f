//! A tiny in-process stand-in for the broker, for the client's own tests.
//!
//! The client must not depend on the server, and its tests must run without
//! one, so this speaks just enough of the protocol over real loopback sockets
//! to exercise routing, retries, batching and parsing: one in-memory log per
//! partition, offsets assigned as the real broker does (rewriting
//! `baseOffset`), a bootstrap port plus one "shard port" that metadata
//! advertises. It answers requests in order and does not long-poll.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::protocol::batch::{set_base_offset, BatchBuilder, BatchView, Record};
use crate::protocol::types::{AckLevel, Offset, PartitionId, ShardId};
use crate::protocol::wire::{
    self, ErrorCode, FetchPartitionResult, FetchResponse, FrameKind, ListOffsetsResponse, ListOffsetsResult,
    MetadataResponse, OffsetSpec, PartitionMetadata, ProducePartitionResult, ProduceResponse, ProducerIdentity,
    Request, Response, ShardEndpoint, StatsResponse, TopicMetadata, TopicResult,
};

/// A test executor, as GLOMMIO.md prescribes (small io_memory, shallow rings).
pub(crate) fn executor() -> glommio::LocalExecutor {
    crate::runtime::test_executor()
}

/// One batch of `count` small records.
pub(crate) fn batch_of(count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new(&mut out, 1_000);
    for index in 0..count {
        let value = format!("value-{index}");
        builder.push(&Record {
            timestamp_ms: 1_000 + index as i64,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
        });
    }
    builder.finish();
    out
}

#[derive(Default)]
struct State {
    /// Each partition's batches, concatenated, with offsets assigned.
    logs: HashMap<String, Vec<Log>>,
    fail_next_produce: Option<ErrorCode>,
    metadata_requests: usize,
    next_producer_id: i64,
    /// Produce requests received, by the local port they came in on.
    produce_by_port: HashMap<u16, usize>,
}

#[derive(Default)]
struct Log {
    bytes: Vec<u8>,
    /// (base offset, byte position) of each batch.
    batches: Vec<(u64, usize)>,
    next_offset: u64,
}

pub(crate) struct FakeBroker {
    bootstrap: SocketAddr,
    shard_port: u16,
    state: Rc<RefCell<State>>,
}

impl FakeBroker {
    /// Listens on a bootstrap port and a shard port (shard 0, which owns
    /// every partition) on 127.0.0.1.
    pub(crate) fn start(topics: &[(&str, u32)]) -> FakeBroker {
        let mut state = State::default();
        for (name, partitions) in topics {
            state.logs.insert(name.to_string(), (0..*partitions).map(|_| Log::default()).collect());
        }
        let state = Rc::new(RefCell::new(state));
        let bootstrap = TcpListener::bind("127.0.0.1:0").expect("bind bootstrap");
        let shard = TcpListener::bind("127.0.0.1:0").expect("bind shard port");
        let bootstrap_addr = bootstrap.local_addr().expect("bootstrap address");
        let shard_port = shard.local_addr().expect("shard address").port();
        for listener in [bootstrap, shard] {
            let state = state.clone();
            glommio::spawn_local(async move {
                while let Ok(stream) = listener.accept().await {
                    glommio::spawn_local(serve(stream, state.clone(), shard_port)).detach();
                }
            })
            .detach();
        }
        FakeBroker { bootstrap: bootstrap_addr, shard_port, state }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.bootstrap
    }

    pub(crate) fn shard_port(&self) -> u16 {
        self.shard_port
    }

    /// The next produce request gets this per-partition error.
    pub(crate) fn fail_next_produce(&self, code: ErrorCode) {
        self.state.borrow_mut().fail_next_produce = Some(code);
    }

    pub(crate) fn metadata_requests(&self) -> usize {
        self.state.borrow().metadata_requests
    }

    pub(crate) fn produce_requests_on(&self, port: u16) -> usize {
        self.state.borrow().produce_by_port.get(&port).copied().unwrap_or(0)
    }
}

async fn serve(mut stream: TcpStream, state: Rc<RefCell<State>>, shard_port: u16) {
    let local_port = stream.local_addr().map(|addr| addr.port()).unwrap_or(0);
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let Ok(len) = wire::frame_len(prefix, 64 << 20) else { return };
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let Ok((head, header, payload)) = wire::split_frame(BytesMut::from(&body[..])) else { return };
        let Ok(request) = wire::decode_header::<Request>(&header) else { return };
        let answer = handle(&mut state.borrow_mut(), request, &payload, local_port, shard_port);
        if let Some((response, data)) = answer {
            let mut out = Vec::new();
            if wire::encode_frame(&mut out, FrameKind::Response, head.request_id, &response, &data).is_err() {
                return;
            }
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

fn handle(
    state: &mut State,
    request: Request,
    payload: &[u8],
    local_port: u16,
    shard_port: u16,
) -> Option<(Response, Vec<u8>)> {
    match request {
        Request::Ping => Some((Response::Pong, Vec::new())),
        Request::Metadata(metadata) => {
            state.metadata_requests += 1;
            let names: Vec<String> = metadata.topics.unwrap_or_else(|| state.logs.keys().cloned().collect());
            let topics = names.iter().map(|name| topic_metadata(state, name)).collect();
            let shards = vec![ShardEndpoint { shard: ShardId(0), port: shard_port }];
            // The payload is echoed so tests can check framing of large payloads.
            Some((Response::Metadata(MetadataResponse { shards, topics }), payload.to_vec()))
        }
        Request::CreateTopic(create) => {
            let error = if state.logs.contains_key(&create.name) { ErrorCode::TOPIC_EXISTS } else { ErrorCode::NONE };
            let partitions = create.partitions.max(1);
            state.logs.entry(create.name.clone()).or_insert_with(|| (0..partitions).map(|_| Log::default()).collect());
            Some((Response::CreateTopic(TopicResult { name: create.name, error, message: String::new() }), Vec::new()))
        }
        Request::DeleteTopic(delete) => {
            let error = if state.logs.remove(&delete.name).is_some() {
                ErrorCode::NONE
            } else {
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
            };
            Some((Response::DeleteTopic(TopicResult { name: delete.name, error, message: String::new() }), Vec::new()))
        }
        Request::Produce(produce) => {
            *state.produce_by_port.entry(local_port).or_default() += 1;
            let mut results = Vec::new();
            let mut rest = payload;
            for partition in produce.partitions {
                let (batches, tail) = rest.split_at((partition.batch_bytes as usize).min(rest.len()));
                rest = tail;
                let error = state.fail_next_produce.take();
                results.push(append(state, &partition.topic, partition.partition, batches, error));
            }
            if produce.acks == AckLevel::None {
                return None;
            }
            Some((Response::Produce(ProduceResponse { partitions: results }), Vec::new()))
        }
        Request::Fetch(fetch) => {
            let mut results = Vec::new();
            let mut data = Vec::new();
            for partition in fetch.partitions {
                let (result, bytes) = read(state, &partition.topic, partition.partition, partition.offset);
                data.extend_from_slice(bytes);
                results.push(result);
            }
            Some((Response::Fetch(FetchResponse { partitions: results }), data))
        }
        Request::ListOffsets(list) => {
            let partitions = list
                .partitions
                .into_iter()
                .map(|asked| {
                    let log = state.logs.get(&asked.topic).and_then(|logs| logs.get(asked.partition.0 as usize));
                    let (error, offset) = match (log, asked.spec) {
                        (None, _) => (ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, None),
                        (Some(_), OffsetSpec::Earliest) => (ErrorCode::NONE, Some(Offset::ZERO)),
                        (Some(log), OffsetSpec::Latest) => (ErrorCode::NONE, Offset::new(log.next_offset)),
                        (Some(_), OffsetSpec::Timestamp(_)) => (ErrorCode::NONE, None),
                    };
                    ListOffsetsResult { topic: asked.topic, partition: asked.partition, error, offset }
                })
                .collect();
            Some((Response::ListOffsets(ListOffsetsResponse { partitions }), Vec::new()))
        }
        Request::Stats => Some((Response::Stats(StatsResponse { shards: Vec::new() }), Vec::new())),
        // Producer ids are handed out; sequences are not checked here
        // (storage/producers.rs and tests/idempotence_crash.rs do).
        Request::InitProducerId => {
            state.next_producer_id += 1;
            let identity = ProducerIdentity { producer_id: state.next_producer_id, epoch: 0 };
            Some((Response::InitProducerId(identity), Vec::new()))
        }
        // Consumer groups are tested against the real broker (tests/groups.rs).
        _ => {
            let message = "the fake broker has no consumer groups".to_string();
            Some((
                Response::Error(crate::protocol::wire::ErrorResponse { code: ErrorCode::INVALID_REQUEST, message }),
                Vec::new(),
            ))
        }
    }
}

fn topic_metadata(state: &State, name: &str) -> TopicMetadata {
    match state.logs.get(name) {
        Some(logs) => {
            let partitions = (0..logs.len())
                .map(|index| PartitionMetadata { partition: PartitionId(index as u32), shard: ShardId(0) })
                .collect();
            TopicMetadata { name: name.to_owned(), error: ErrorCode::NONE, partitions }
        }
        None => TopicMetadata {
            name: name.to_owned(),
            error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            partitions: Vec::new(),
        },
    }
}

fn append(
    state: &mut State,
    topic: &str,
    partition: PartitionId,
    batches: &[u8],
    forced: Option<ErrorCode>,
) -> ProducePartitionResult {
    let mut result = ProducePartitionResult {
        topic: topic.to_owned(),
        partition,
        error: forced.unwrap_or(ErrorCode::NONE),
        base_offset: Offset::ZERO,
        next_offset: Offset::ZERO,
    };
    let Some(log) = state.logs.get_mut(topic).and_then(|logs| logs.get_mut(partition.0 as usize)) else {
        result.error = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION;
        return result;
    };
    if forced.is_some() {
        return result;
    }
    // Validate everything before appending anything, as the broker does.
    let mut sizes = Vec::new();
    let mut rest = batches;
    while !rest.is_empty() {
        match BatchView::parse(rest, rest.len()) {
            Ok(view) => {
                sizes.push((view.total_len(), u64::from(view.record_count().unsigned_abs())));
                rest = &rest[view.total_len()..];
            }
            Err(_) => {
                result.error = ErrorCode::INVALID_BATCH;
                return result;
            }
        }
    }
    let base = log.next_offset;
    let mut position = 0;
    for (len, count) in sizes {
        let start = log.bytes.len();
        log.bytes.extend_from_slice(&batches[position..position + len]);
        set_base_offset(&mut log.bytes[start..], log.next_offset as i64);
        log.batches.push((log.next_offset, start));
        log.next_offset += count;
        position += len;
    }
    result.base_offset = Offset::new(base).unwrap_or(Offset::MAX);
    result.next_offset = Offset::new(log.next_offset).unwrap_or(Offset::MAX);
    result
}

fn read<'a>(state: &'a State, topic: &str, partition: PartitionId, offset: Offset) -> (FetchPartitionResult, &'a [u8]) {
    let mut result = FetchPartitionResult {
        topic: topic.to_owned(),
        partition,
        error: ErrorCode::NONE,
        high_watermark: Offset::ZERO,
        log_start: Offset::ZERO,
        bytes: 0,
    };
    let Some(log) = state.logs.get(topic).and_then(|logs| logs.get(partition.0 as usize)) else {
        result.error = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION;
        return (result, &[]);
    };
    result.high_watermark = Offset::new(log.next_offset).unwrap_or(Offset::MAX);
    if offset.get() > log.next_offset {
        result.error = ErrorCode::OFFSET_OUT_OF_RANGE;
        return (result, &[]);
    }
    // The batch containing `offset` is the last one starting at or before it.
    let first = log.batches.iter().rposition(|(base, _)| *base <= offset.get());
    let start = match first {
        Some(index) if offset.get() < log.next_offset => log.batches[index].1,
        _ => log.bytes.len(),
    };
    let bytes = &log.bytes[start..];
    result.bytes = bytes.len() as u32;
    (result, bytes)
}
