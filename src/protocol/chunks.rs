//! A byte string held as a list of shared pieces.
//!
//! Fetch data is the log's cached batches (`Bytes` the cache already holds)
//! and, for older data, what a disk read copied out of its DMA buffers.
//! Keeping the pieces as they are, instead of gathering them into one
//! buffer, lets a fetch answer travel from the cache through the mesh to
//! the socket without its bytes being copied: the writer hands the pieces
//! to one vectored write.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Bytes in order, as shared pieces. Empty pieces are never kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunks {
    pieces: Vec<Bytes>,
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
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Adds `bytes` at the end; shares them, copies nothing.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.pieces.push(bytes);
        }
    }

    /// Adds every piece of `other` at the end.
    pub fn append(&mut self, other: Chunks) {
        self.len += other.len;
        self.pieces.extend(other.pieces);
    }

    /// Keeps the first `len` bytes (all of them if there are fewer).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let mut kept = 0;
        let mut count = 0;
        for piece in &mut self.pieces {
            if kept + piece.len() >= len {
                piece.truncate(len - kept);
                count += 1;
                break;
            }
            kept += piece.len();
            count += 1;
        }
        self.pieces.truncate(count);
        self.pieces.retain(|piece| !piece.is_empty());
        self.len = len;
    }

    /// The bytes in `range`, sharing this string's pieces; `None` if the
    /// range is not within it.
    pub fn slice(&self, range: Range<usize>) -> Option<Chunks> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        let mut out = Chunks::new();
        let mut at = 0;
        for piece in &self.pieces {
            let (start, end) = (at, at + piece.len());
            at = end;
            if end <= range.start {
                continue;
            }
            if start >= range.end {
                break;
            }
            let from = range.start.saturating_sub(start);
            let to = range.end.min(end) - start;
            out.push(piece.slice(from..to));
        }
        Some(out)
    }

    /// The bytes as one contiguous buffer: shared when there is one piece,
    /// copied together otherwise.
    pub fn contiguous(&self) -> Bytes {
        match self.pieces.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len);
                for piece in many {
                    out.extend_from_slice(piece);
                }
                out.freeze()
            }
        }
    }
}

impl From<Vec<u8>> for Chunks {
    fn from(bytes: Vec<u8>) -> Chunks {
        let mut chunks = Chunks::new();
        chunks.push(Bytes::from(bytes));
        chunks
    }
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Chunks {
        let mut chunks = Chunks::new();
        chunks.push(bytes);
        chunks
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
    fn a_slice_shares_the_pieces_it_spans() {
        let chunks = three();
        let middle = chunks.slice(2..5).unwrap();
        assert_eq!(&middle.contiguous()[..], b"cde");
        assert_eq!(middle.pieces().len(), 2);
        let source = chunks.pieces()[1].as_ptr();
        assert_eq!(middle.pieces()[1].as_ptr(), source, "the slice copied instead of sharing");
        assert_eq!(chunks.slice(8..8).unwrap().len(), 0);
        assert!(chunks.slice(3..9).is_none());
        let (start, end) = (5, 4);
        assert!(chunks.slice(start..end).is_none());
    }

    #[test]
    fn truncate_keeps_a_prefix() {
        for len in 0..=9 {
            let mut chunks = three();
            chunks.truncate(len);
            let expected = &b"abcdefgh"[..len.min(8)];
            assert_eq!(&chunks.contiguous()[..], expected, "truncate({len})");
            assert_eq!(chunks.len(), expected.len());
            assert!(chunks.pieces().iter().all(|piece| !piece.is_empty()));
        }
    }

    #[test]
    fn one_piece_is_shared_when_made_contiguous() {
        let piece = Bytes::from(vec![7u8; 100]);
        let chunks = Chunks::from(piece.clone());
        assert_eq!(chunks.contiguous().as_ptr(), piece.as_ptr());
        let mut both = chunks.clone();
        both.append(Chunks::from(vec![1, 2]));
        assert_eq!(both.len(), 102);
        assert_eq!(both.contiguous()[100..], [1, 2]);
    }
}
