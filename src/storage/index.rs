//! The sparse offset and time index of one segment.
//!
//! One entry per `index_interval_bytes` of log: the offset and file position
//! of a batch, and the largest timestamp seen in the segment up to and
//! including it. A read looks up the last entry at or before the wanted offset
//! and scans forward from there; a time lookup finds the first entry whose
//! running maximum reaches the wanted time.
//!
//! Sealed segments keep their index in a `.index` file written when the
//! segment is sealed (byte layout in `docs/storage-format.md`). The file is a
//! cache: damaged or missing, it is rebuilt by scanning the segment.

use crate::protocol::types::{FilePos, Offset, TimestampMs};

/// Magic bytes at the start of an index file.
const INDEX_MAGIC: [u8; 4] = *b"RBIX";
const INDEX_VERSION: u16 = 1;
/// magic 4 | version 2 | reserved 2 | base 8 | segment bytes 8 | next offset 8
/// | max timestamp 8 | entry count 4
const INDEX_HEADER_BYTES: usize = 44;
/// relative offset 4 | position 4 | timestamp 8
const INDEX_ENTRY_BYTES: usize = 16;
const INDEX_CRC_BYTES: usize = 4;

/// One sparse index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the indexed batch, relative to the segment's base offset.
    pub relative_offset: u32,
    /// File position of the indexed batch.
    pub pos: u32,
    /// Largest batch timestamp in the segment up to this batch.
    pub max_timestamp: TimestampMs,
}

/// The summary and sparse index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    pub base: Offset,
    /// Logical size of the segment: bytes of whole batches.
    pub segment_bytes: u64,
    /// One past the last offset in the segment (`base` when empty).
    pub next_offset: Offset,
    /// Largest batch timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: TimestampMs,
    entries: Vec<IndexEntry>,
    interval_bytes: u32,
    /// Log bytes appended since the last entry.
    bytes_since_entry: u64,
}

impl SegmentIndex {
    pub fn new(base: Offset, interval_bytes: u32) -> SegmentIndex {
        SegmentIndex {
            base,
            segment_bytes: 0,
            next_offset: base,
            max_timestamp: TimestampMs(i64::MIN),
            entries: Vec::new(),
            interval_bytes,
            bytes_since_entry: 0,
        }
    }

    /// Records a batch appended at the segment's end.
    pub fn push_batch(&mut self, base: Offset, next: Offset, len_bytes: u64, max_timestamp: TimestampMs) {
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        let first_batch = self.segment_bytes == 0;
        if first_batch || self.bytes_since_entry >= u64::from(self.interval_bytes) {
            // Invariant: segment_bytes_max <= u32::MAX (LogConfig::validate),
            // and offsets within a segment stay within u32 (checked by the log).
            self.entries.push(IndexEntry {
                relative_offset: base.distance_from(self.base) as u32,
                pos: self.segment_bytes as u32,
                max_timestamp: self.max_timestamp,
            });
            self.bytes_since_entry = 0;
        }
        self.segment_bytes += len_bytes;
        self.bytes_since_entry += len_bytes;
        self.next_offset = next;
    }

    /// Position of the last indexed batch starting at or before `offset`
    /// (0 if none).
    pub fn floor_pos(&self, offset: Offset) -> FilePos {
        let relative = offset.distance_from(self.base);
        let after = self.entries.partition_point(|entry| u64::from(entry.relative_offset) <= relative);
        FilePos(after.checked_sub(1).map_or(0, |index| u64::from(self.entries[index].pos)))
    }

    /// Position from which a scan finds the first batch with a timestamp at
    /// or after `time`: the entry before the first one whose running maximum
    /// reaches it. `None` when no batch in the segment is that recent.
    pub fn time_floor_pos(&self, time: TimestampMs) -> Option<FilePos> {
        if self.max_timestamp < time {
            return None;
        }
        let reached = self.entries.partition_point(|entry| entry.max_timestamp < time);
        Some(FilePos(reached.checked_sub(1).map_or(0, |index| u64::from(self.entries[index].pos))))
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Encodes the index file.
    pub fn encode(&self) -> Vec<u8> {
        let len = INDEX_HEADER_BYTES + self.entries.len() * INDEX_ENTRY_BYTES + INDEX_CRC_BYTES;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.base.get().to_le_bytes());
        out.extend_from_slice(&self.segment_bytes.to_le_bytes());
        out.extend_from_slice(&self.next_offset.get().to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.0.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
            out.extend_from_slice(&entry.pos.to_le_bytes());
            out.extend_from_slice(&entry.max_timestamp.0.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes an index file; `None` if it is damaged in any way or does not
    /// belong to the segment at `base` (the caller then rebuilds it).
    pub fn decode(bytes: &[u8], base: Offset, interval_bytes: u32) -> Option<SegmentIndex> {
        let body_len = bytes.len().checked_sub(INDEX_CRC_BYTES)?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32c::crc32c(body).to_le_bytes() != crc || body.len() < INDEX_HEADER_BYTES {
            return None;
        }
        let mut reader = Reader(body);
        if reader.take::<4>()? != INDEX_MAGIC || u16::from_le_bytes(reader.take()?) != INDEX_VERSION {
            return None;
        }
        reader.take::<2>()?;
        let stored_base = Offset::new(u64::from_le_bytes(reader.take()?))?;
        let segment_bytes = u64::from_le_bytes(reader.take()?);
        let next_offset = Offset::new(u64::from_le_bytes(reader.take()?))?;
        let max_timestamp = TimestampMs(i64::from_le_bytes(reader.take()?));
        let count = u32::from_le_bytes(reader.take()?) as usize;
        // The count must match the bytes present before anything is sized by it.
        if stored_base != base || next_offset < base || reader.0.len() != count.checked_mul(INDEX_ENTRY_BYTES)? {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let entry = IndexEntry {
                relative_offset: u32::from_le_bytes(reader.take()?),
                pos: u32::from_le_bytes(reader.take()?),
                max_timestamp: TimestampMs(i64::from_le_bytes(reader.take()?)),
            };
            let ordered = entries
                .last()
                .is_none_or(|last: &IndexEntry| last.relative_offset < entry.relative_offset && last.pos < entry.pos);
            if !ordered || u64::from(entry.pos) >= segment_bytes {
                return None;
            }
            entries.push(entry);
        }
        let bytes_since_entry = segment_bytes - entries.last().map_or(0, |entry| u64::from(entry.pos));
        Some(SegmentIndex {
            base,
            segment_bytes,
            next_offset,
            max_timestamp,
            entries,
            interval_bytes,
            bytes_since_entry,
        })
    }
}

/// Reads fixed-size fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(value: u64) -> Offset {
        Offset::new(value).unwrap()
    }

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::new(offset(100), 1000);
        // Ten batches of 10 records and 600 bytes each, timestamps 10, 20, ...
        for batch in 0..10u64 {
            let base = offset(100 + batch * 10);
            index.push_batch(base, base.plus(10), 600, TimestampMs(10 * (batch as i64 + 1)));
        }
        index
    }

    #[test]
    fn entries_are_sparse_and_lookups_floor() {
        let index = sample();
        // Entries at batches 0, 2, 4, 6, 8 (every second 600-byte batch crosses 1000 bytes).
        let positions: Vec<u32> = index.entries().iter().map(|entry| entry.pos).collect();
        assert_eq!(positions, vec![0, 1200, 2400, 3600, 4800]);
        assert_eq!(index.floor_pos(offset(100)), FilePos(0));
        assert_eq!(index.floor_pos(offset(125)), FilePos(1200));
        assert_eq!(index.floor_pos(offset(199)), FilePos(4800));
        assert_eq!(index.next_offset, offset(200));
        assert_eq!(index.segment_bytes, 6000);
    }

    #[test]
    fn time_lookup_finds_a_scan_start_at_or_before_the_first_match() {
        let index = sample();
        assert_eq!(index.time_floor_pos(TimestampMs(5)), Some(FilePos(0)));
        // Timestamp 45 first reached by batch 4 (ts 50): scan from entry before (batch 2).
        assert_eq!(index.time_floor_pos(TimestampMs(45)), Some(FilePos(1200)));
        assert_eq!(index.time_floor_pos(TimestampMs(101)), None);
    }

    #[test]
    fn encode_decode_round_trips_and_damage_is_detected() {
        let index = sample();
        let bytes = index.encode();
        assert_eq!(SegmentIndex::decode(&bytes, offset(100), 1000), Some(index));
        assert_eq!(SegmentIndex::decode(&bytes, offset(101), 1000), None, "wrong segment");
        for cut in 0..bytes.len() {
            assert_eq!(SegmentIndex::decode(&bytes[..cut], offset(100), 1000), None, "cut at {cut}");
        }
        for byte in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 0x10;
            assert_eq!(SegmentIndex::decode(&damaged, offset(100), 1000), None, "flip at {byte}");
        }
    }
}
