//! The cross-core mesh: one bounded channel for each ordered pair of shards.
//!
//! Built on the starting thread before any shard runs, so there is no join
//! handshake between executors (glommio's own channel mesh needs one, and it
//! could hang at start-up under load). A full channel makes the sender wait:
//! backpressure from a busy shard to the shards forwarding to it.
//!
//! Generic over the message type `M`: the mesh knows nothing of what
//! shards say to each other (`ShardMessage`, in `shard/mod.rs`).

use crate::protocol::types::ShardId;

/// One shard's ends of the mesh.
#[derive(Debug)]
pub struct MeshEnds<M> {
    id: ShardId,
    /// `senders[j]`: to shard j (`None` for this shard itself).
    senders: Vec<Option<flume::Sender<M>>>,
    /// `receivers[j]`: from shard j (`None` for this shard itself).
    receivers: Vec<Option<flume::Receiver<M>>>,
}

/// Builds the mesh for `shard_count` shards; element i goes to shard i.
pub fn build<M>(shard_count: usize, capacity: usize) -> Vec<MeshEnds<M>> {
    let mut ends: Vec<MeshEnds<M>> = (0..shard_count)
        .map(|id| MeshEnds {
            id: ShardId(id as u16),
            senders: (0..shard_count).map(|_| None).collect(),
            receivers: (0..shard_count).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shard_count {
        for to in (0..shard_count).filter(|to| *to != from) {
            let (sender, receiver) = flume::bounded(capacity);
            ends[from].senders[to] = Some(sender);
            ends[to].receivers[from] = Some(receiver);
        }
    }
    ends
}

impl<M> MeshEnds<M> {
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Splits into the sending half and the receivers, one per peer.
    pub(super) fn split(self) -> (MeshSenders<M>, Vec<(ShardId, flume::Receiver<M>)>) {
        let receivers = self
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(peer, receiver)| Some((ShardId(peer as u16), receiver?)))
            .collect();
        (MeshSenders { senders: std::cell::RefCell::new(self.senders) }, receivers)
    }
}

/// The sending half a shard keeps.
#[derive(Debug)]
pub(super) struct MeshSenders<M> {
    senders: std::cell::RefCell<Vec<Option<flume::Sender<M>>>>,
}

impl<M> MeshSenders<M> {
    /// Sends to `to`, waiting while its channel is full. `None` if that
    /// shard is gone (or this one is closing).
    pub(super) async fn send(&self, to: ShardId, message: M) -> Option<()> {
        let sender = self.senders.borrow().get(to.index())?.clone()?;
        sender.send_async(message).await.ok()
    }

    /// Drops every sender, so peers' receive loops end.
    pub(super) fn close(&self) {
        self.senders.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ordered_pair_gets_a_channel() {
        let ends = build::<u32>(3, 4);
        assert_eq!(ends.len(), 3);
        for (id, end) in ends.iter().enumerate() {
            assert_eq!(end.id(), ShardId(id as u16));
            for peer in 0..3 {
                assert_eq!(end.senders[peer].is_some(), peer != id);
                assert_eq!(end.receivers[peer].is_some(), peer != id);
            }
        }
    }
}
