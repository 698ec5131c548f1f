//! From a decoded request to a response: checks the request's shape and
//! limits, then hands the work to the shard.

use std::rc::Rc;

use bytes::BytesMut;

use crate::protocol::types::AckLevel;
use crate::protocol::wire::{
    ErrorCode, ErrorResponse, FetchRequest, FetchResponse, ListOffsetsResponse, ProduceRequest, ProduceResponse,
    Request, Response,
};
use crate::shard::{Counters, ProduceItem, Shard};

use super::connection::Limits;

/// Most partitions one request may name.
const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;
/// Room left in a response frame for its header.
const RESPONSE_HEADER_ROOM_BYTES: usize = 1 << 20;

/// Serves one request. `None`: no response is sent (produce with acks none).
pub(super) async fn handle(
    shard: &Rc<Shard>,
    request: Request,
    payload: BytesMut,
    limits: &Limits,
) -> Option<(Response, Vec<u8>)> {
    let counters = shard.counters();
    let response = match request {
        Request::Ping => {
            Counters::add(&counters.other_requests, 1);
            Response::Pong
        }
        Request::Metadata(request) => {
            Counters::add(&counters.metadata_requests, 1);
            Response::Metadata(shard.metadata_response(request.topics))
        }
        Request::CreateTopic(request) => {
            Counters::add(&counters.admin_requests, 1);
            Response::CreateTopic(shard.create_topic(request.name, request.partitions).await)
        }
        Request::DeleteTopic(request) => {
            Counters::add(&counters.admin_requests, 1);
            Response::DeleteTopic(shard.delete_topic(request.name).await)
        }
        Request::Produce(request) => {
            Counters::add(&counters.produce_requests, 1);
            return produce(shard, request, payload).await.map(|response| (response, Vec::new()));
        }
        Request::Fetch(request) => {
            Counters::add(&counters.fetch_requests, 1);
            return Some(fetch(shard, request, limits).await);
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
    };
    Some((response, Vec::new()))
}

async fn produce(shard: &Rc<Shard>, request: ProduceRequest, mut payload: BytesMut) -> Option<Response> {
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
    let items = partitions
        .into_iter()
        .map(|p| ProduceItem { topic: p.topic, partition: p.partition, data: payload.split_to(p.batch_bytes as usize) })
        .collect();
    let results = shard.produce(acks, timeout_ms, items).await;
    (acks != AckLevel::None).then_some(Response::Produce(ProduceResponse { partitions: results }))
}

async fn fetch(shard: &Rc<Shard>, mut request: FetchRequest, limits: &Limits) -> (Response, Vec<u8>) {
    if request.partitions.len() > PARTITIONS_PER_REQUEST_MAX {
        return (too_many_partitions(), Vec::new());
    }
    // The response must fit one frame; a long-poll must end before the
    // request deadline does.
    let room = limits.max_frame_bytes.saturating_sub(RESPONSE_HEADER_ROOM_BYTES) as u32;
    request.max_bytes = request.max_bytes.min(room);
    let wait_limit = limits.request_timeout.saturating_sub(limits.request_timeout / 10);
    request.max_wait_ms = request.max_wait_ms.min(u32::try_from(wait_limit.as_millis()).unwrap_or(u32::MAX));
    let outcome = shard.fetch(request).await;
    (Response::Fetch(FetchResponse { partitions: outcome.results }), outcome.payload)
}

fn too_many_partitions() -> Response {
    invalid(format!("a request may name at most {PARTITIONS_PER_REQUEST_MAX} partitions"))
}

fn invalid(message: String) -> Response {
    Response::Error(ErrorResponse { code: ErrorCode::INVALID_REQUEST, message })
}
