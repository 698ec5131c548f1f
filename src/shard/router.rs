//! The router: splits a request by the shard owning each partition, sends
//! the remote parts over the mesh first, runs the local part meanwhile,
//! then puts the answers back in request order. One scatter/gather serves
//! every request that spans shards (produce, fetch, list offsets, delete
//! records); the front doors and the shard's services never talk to the
//! mesh themselves.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures_channel::oneshot;
use futures_lite::future;

use crate::protocol::types::{PartitionId, ShardId};
use crate::protocol::wire::ErrorCode;

use super::mesh::MeshSenders;
use super::metadata::ClusterMetadata;
use super::{Counters, ShardMessage};

/// Items of one request grouped by owning shard, each with its position in
/// the request.
pub type Routed<T> = BTreeMap<ShardId, Vec<(usize, T)>>;

/// This shard's ends of the mesh, and the scatter/gather over them.
#[derive(Debug)]
pub struct Router {
    id: ShardId,
    mesh: MeshSenders<ShardMessage>,
    counters: Rc<Counters>,
}

impl Router {
    pub fn new(id: ShardId, mesh: MeshSenders<ShardMessage>, counters: Rc<Counters>) -> Router {
        Router { id, mesh, counters }
    }

    /// Sends a message to another shard; `None` if that shard is gone.
    pub async fn send(&self, shard: ShardId, message: ShardMessage) -> Option<()> {
        send(&self.mesh, &self.counters, shard, message).await
    }

    /// Closes this shard's sending ends.
    pub fn close(&self) {
        self.mesh.close();
    }

    /// Runs a request whose items each name a partition on the shards that
    /// own them (see [`Shard::scatter`]) and returns one result per item, in
    /// request order: `failed` makes the result of an item of an unknown
    /// partition (UNKNOWN_TOPIC_OR_PARTITION) or of a shard that is gone
    /// (SHUTTING_DOWN).
    pub async fn scatter_gather<T, R: Clone + 'static>(
        &self,
        metadata: &ClusterMetadata,
        items: Vec<T>,
        key: impl Fn(&T) -> (&str, PartitionId),
        local: impl FnOnce(Vec<T>) -> Pin<Box<dyn Future<Output = Vec<R>>>>,
        message: impl Fn(Vec<T>, oneshot::Sender<Vec<R>>) -> ShardMessage,
        failed: impl Fn(&str, PartitionId, ErrorCode) -> R,
    ) -> Vec<R> {
        let mut results: Vec<Option<R>> = vec![None; items.len()];
        let (routed, unknown) = route(metadata, items, &key);
        for (index, item) in unknown {
            let (topic, partition) = key(&item);
            results[index] = Some(failed(topic, partition, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION));
        }
        let owned_key = |item: &T| {
            let (topic, partition) = key(item);
            (topic.to_string(), partition)
        };
        for part in self.scatter(routed, owned_key, local, message).await {
            for (position, index) in part.indexes.into_iter().enumerate() {
                let answer = part.answer.as_ref().and_then(|answers| answers.get(position).cloned());
                let (topic, partition) = &part.keys[position];
                results[index] = Some(answer.unwrap_or_else(|| failed(topic, *partition, ErrorCode::SHUTTING_DOWN)));
            }
        }
        results.into_iter().map(|result| result.expect("every item got a result")).collect()
    }

    /// Runs one part of a request per owning shard, all at once: this
    /// shard's part here, the others' by message. Returns each part with its
    /// items' positions in the request, their (topic, partition), and the
    /// answer (`None` if that shard is gone).
    pub async fn scatter<T, A: 'static>(
        &self,
        routed: Routed<T>,
        key: impl Fn(&T) -> (String, PartitionId),
        local: impl FnOnce(Vec<T>) -> Pin<Box<dyn Future<Output = A>>>,
        message: impl Fn(Vec<T>, oneshot::Sender<A>) -> ShardMessage,
    ) -> Vec<Part<A>> {
        let mut parts = Vec::with_capacity(routed.len());
        let mut answers: Vec<Pin<Box<dyn Future<Output = Option<A>> + '_>>> = Vec::with_capacity(routed.len());
        let mut local = Some(local);
        for (shard, items) in routed {
            let (indexes, items): (Vec<usize>, Vec<T>) = items.into_iter().unzip();
            parts.push(Part { indexes, keys: items.iter().map(&key).collect(), answer: None });
            if shard == self.id {
                let run = local.take().expect("one part per shard")(items);
                answers.push(Box::pin(async move { Some(run.await) }));
            } else {
                let (reply, answer) = oneshot::channel();
                let request = message(items, reply);
                answers.push(Box::pin(async move {
                    self.send(shard, request).await?;
                    answer.await.ok()
                }));
            }
        }
        for (part, answer) in parts.iter_mut().zip(join_all(answers).await) {
            part.answer = answer;
        }
        parts
    }
}

/// Splits items by owning shard; items of unknown topics or partitions
/// come back separately.
pub fn route<T>(
    metadata: &ClusterMetadata,
    items: Vec<T>,
    key: impl Fn(&T) -> (&str, PartitionId),
) -> (Routed<T>, Vec<(usize, T)>) {
    let mut routed: Routed<T> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let (topic, partition) = key(&item);
        match metadata.owner(topic, partition) {
            Some(shard) => routed.entry(shard).or_default().push((index, item)),
            None => unknown.push((index, item)),
        }
    }
    (routed, unknown)
}

/// One shard's share of a request, see [`Router::scatter`].
pub struct Part<A> {
    pub indexes: Vec<usize>,
    pub keys: Vec<(String, PartitionId)>,
    pub answer: Option<A>,
}

/// Polls every future until all have completed; outputs in input order.
async fn join_all<T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future completed")).collect()
}

/// Data-path messages (produce, fetch, list offsets) count as forwarded:
/// with shard-aware clients there are none.
async fn send(
    mesh: &MeshSenders<ShardMessage>,
    counters: &Counters,
    shard: ShardId,
    message: ShardMessage,
) -> Option<()> {
    if matches!(message, ShardMessage::Produce { .. } | ShardMessage::Fetch { .. } | ShardMessage::ListOffsets { .. }) {
        Counters::add(&counters.forwarded_out, 1);
    }
    mesh.send(shard, message).await
}
