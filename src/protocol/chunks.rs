//! A byte string held as a list of shared pieces.
//!
//! Fetch data is the log's cached batches (`Bytes` the cache already holds)
//! and, for older data, what a disk read copied out of its DMA buffers.
//! Keeping the pieces as they are, instead of gathering them into one
//! buffer, lets a fetch answer travel from the cache through the mesh to
//! the socket without its bytes being copied: the writer hands the pieces
//! to one vectored write.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Bytes in order, as shared pieces. Empty pieces are never kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunks {
    pieces: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    pub fn new() -> Chunks {
        Chunks::default()
    }

    /// All the bytes, in order.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order (none of them empty).
    pub fn pieces(&self) -> impl ExactSizeIterator<Item = &Bytes> {
        self.pieces.iter()
    }

    /// Adds `bytes` at the end; shares them, copies nothing.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.pieces.push_back(bytes);
        }
    }

    /// Adds every piece of `other` at the end.
    pub fn append(&mut self, other: Chunks) {
        self.len += other.len;
        self.pieces.extend(other.pieces);
    }

    /// Removes the first `n` bytes (all of them if there are fewer) and
    /// returns them, sharing the pieces. Costs the pieces it takes, so a
    /// fetch answer is cut into its partitions' parts in one pass.
    pub fn split_to(&mut self, n: usize) -> Chunks {
        let mut taken = Chunks::new();
        while taken.len < n {
            let Some(mut piece) = self.pieces.pop_front() else { break };
            let wanted = n - taken.len;
            if piece.len() > wanted {
                let head = piece.split_to(wanted);
                self.pieces.push_front(piece);
                taken.push(head);
            } else {
                taken.push(piece);
            }
        }
        self.len -= taken.len;
        taken
    }

    /// The bytes as one contiguous buffer: shared when there is one piece,
    /// copied together otherwise.
    pub fn contiguous(&self) -> Bytes {
        match self.pieces.len() {
            0 => Bytes::new(),
            1 => self.pieces[0].clone(),
            _ => {
                let mut out = BytesMut::with_capacity(self.len);
                for piece in &self.pieces {
                    out.extend_from_slice(piece);
                }
                out.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Chunks {
        let mut chunks = Chunks::new();
        chunks.push(Bytes::from_static(b"abc"));
        chunks.push(Bytes::new());
        chunks.push(Bytes::from_static(b"defg"));
        chunks.push(Bytes::from_static(b"h"));
        chunks
    }

    #[test]
    fn pieces_keep_their_order_and_no_empty_piece() {
        let chunks = three();
        assert_eq!(chunks.len(), 8);
        assert_eq!(chunks.pieces().len(), 3);
        assert_eq!(&chunks.contiguous()[..], b"abcdefgh");
    }

    #[test]
    fn split_to_takes_a_prefix_sharing_the_pieces() {
        for n in 0..=9 {
            let mut rest = three();
            let source = rest.pieces().nth(1).map(|piece| piece.as_ptr());
            let head = rest.split_to(n);
            assert_eq!(&head.contiguous()[..], &b"abcdefgh"[..n.min(8)], "split_to({n})");
            assert_eq!(&rest.contiguous()[..], &b"abcdefgh"[n.min(8)..], "what split_to({n}) left");
            assert_eq!(head.len() + rest.len(), 8);
            assert!(head.pieces().chain(rest.pieces()).all(|piece| !piece.is_empty()));
            if n == 5 {
                // "de" of the second piece: the same memory, not a copy.
                assert_eq!(head.pieces().nth(1).map(|piece| piece.as_ptr()), source);
            }
        }
    }

    #[test]
    fn one_piece_is_shared_when_made_contiguous() {
        let piece = Bytes::from(vec![7u8; 100]);
        let mut chunks = Chunks::new();
        chunks.push(piece.clone());
        assert_eq!(chunks.contiguous().as_ptr(), piece.as_ptr());
        let mut both = chunks.clone();
        let mut tail = Chunks::new();
        tail.push(Bytes::from_static(&[1, 2]));
        both.append(tail);
        assert_eq!(both.len(), 102);
        assert_eq!(both.contiguous()[100..], [1, 2]);
    }
}
