//! Idempotent producers' state in one partition: per producer id, its
//! epoch and the sequence numbers and offsets of its last few batches, so a
//! batch sent again (its acknowledgement was lost) is answered with the
//! offsets it got the first time instead of being stored twice.
//!
//! The rules are Kafka's. A producer numbers its batches per partition from
//! 0 (wrapping after `i32::MAX`); a batch must start right after the last
//! one stored. One of the last [`BATCHES_KEPT`] again is a duplicate; a
//! gap is out of order; an older epoch is fenced; a newer epoch starts over
//! at sequence 0. Batches without a producer id are not checked.
//!
//! The table is bounded: producers unheard of for `expiry` are dropped,
//! and past `producers_max` the one heard from longest ago makes room. A
//! producer id the table does not know is accepted at any sequence (its
//! state expired, or was in a part of the log not read back at start).

use std::collections::{HashMap, VecDeque};

use crate::protocol::batch::{BatchView, NO_PRODUCER_ID};
use crate::protocol::types::Offset;

/// Batches remembered per producer: Kafka's producers keep at most 5 in
/// flight per partition, so a retry is always one of the last 5.
pub const BATCHES_KEPT: usize = 5;

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base: Offset,
    pub next: Offset,
}

/// A batch's producer fields, as the checks need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    /// Records in the batch (at least 1).
    pub count: u32,
}

impl ProducerFields {
    /// The fields of `view`, or `None` for a batch of no idempotent producer.
    pub fn of(view: &BatchView<'_>) -> Option<ProducerFields> {
        let producer_id = view.producer_id();
        if producer_id == NO_PRODUCER_ID || producer_id < 0 || view.base_sequence() < 0 {
            return None;
        }
        Some(ProducerFields {
            producer_id,
            epoch: view.producer_epoch(),
            first_seq: view.base_sequence(),
            // parse checked last_offset_delta >= 0.
            count: view.last_offset_delta() as u32 + 1,
        })
    }

    fn last_seq(&self) -> i32 {
        add_seq(self.first_seq, self.count - 1)
    }
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// Stored already: answer with these offsets.
    Duplicate(ProducedBatch),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrder { producer_id: i64, expected: i32, got: i32 },
    #[error("producer {producer_id}: epoch {got} is older than its current epoch {current}")]
    Fenced { producer_id: i64, current: i16, got: i16 },
    /// A retry older than the batches remembered: stored long ago, but its
    /// offsets are no longer known.
    #[error("producer {producer_id}: sequence {got} was stored before the last {BATCHES_KEPT} batches")]
    OldDuplicate { producer_id: i64, got: i32 },
}

#[derive(Debug)]
struct Entry {
    epoch: i16,
    /// Oldest first, at most [`BATCHES_KEPT`].
    batches: VecDeque<ProducedBatch>,
    last_seen_ms: i64,
}

/// The producers of one partition.
#[derive(Debug)]
pub struct ProducerTable {
    entries: HashMap<i64, Entry>,
    producers_max: usize,
    expiry_ms: i64,
}

impl ProducerTable {
    pub fn new(producers_max: usize, expiry_ms: i64) -> ProducerTable {
        ProducerTable { entries: HashMap::new(), producers_max: producers_max.max(1), expiry_ms }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a batch with `fields` may be appended.
    pub fn check(&self, fields: &ProducerFields) -> Result<Verdict, SequenceError> {
        let producer_id = fields.producer_id;
        let Some(entry) = self.entries.get(&producer_id) else { return Ok(Verdict::Append) };
        if fields.epoch < entry.epoch {
            return Err(SequenceError::Fenced { producer_id, current: entry.epoch, got: fields.epoch });
        }
        if fields.epoch > entry.epoch {
            // A new epoch starts its sequences over.
            return match fields.first_seq {
                0 => Ok(Verdict::Append),
                got => Err(SequenceError::OutOfOrder { producer_id, expected: 0, got }),
            };
        }
        let last_seq = fields.last_seq();
        if let Some(stored) =
            entry.batches.iter().find(|stored| stored.first_seq == fields.first_seq && stored.last_seq == last_seq)
        {
            return Ok(Verdict::Duplicate(*stored));
        }
        let Some(newest) = entry.batches.back() else { return Ok(Verdict::Append) };
        let expected = add_seq(newest.last_seq, 1);
        if fields.first_seq == expected {
            return Ok(Verdict::Append);
        }
        let oldest = entry.batches.front().map_or(expected, |oldest| oldest.first_seq);
        // Behind the oldest remembered batch (within half the sequence
        // space, so wrapping is read right): an old retry.
        if seq_distance(fields.first_seq, oldest) > 0 {
            return Err(SequenceError::OldDuplicate { producer_id, got: fields.first_seq });
        }
        Err(SequenceError::OutOfOrder { producer_id, expected, got: fields.first_seq })
    }

    /// Remembers a batch just appended at `base..next`, at `now_ms`.
    pub fn record(&mut self, fields: &ProducerFields, base: Offset, next: Offset, now_ms: i64) {
        if !self.entries.contains_key(&fields.producer_id) {
            self.make_room(now_ms);
        }
        let entry = self.entries.entry(fields.producer_id).or_insert_with(|| Entry {
            epoch: fields.epoch,
            batches: VecDeque::with_capacity(BATCHES_KEPT),
            last_seen_ms: now_ms,
        });
        if fields.epoch != entry.epoch {
            entry.epoch = fields.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(ProducedBatch { first_seq: fields.first_seq, last_seq: fields.last_seq(), base, next });
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
    }

    /// Drops producers unheard of for the expiry time.
    pub fn expire(&mut self, now_ms: i64) {
        let expiry_ms = self.expiry_ms;
        self.entries.retain(|_, entry| now_ms.saturating_sub(entry.last_seen_ms) < expiry_ms);
    }

    /// Before a new producer is added: the expired go, and past the limit
    /// the one heard from longest ago.
    fn make_room(&mut self, now_ms: i64) {
        self.expire(now_ms);
        while self.entries.len() >= self.producers_max {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, entry)| entry.last_seen_ms).map(|(id, _)| *id)
            else {
                return;
            };
            self.entries.remove(&oldest);
        }
    }
}

/// Milliseconds since the Unix epoch, the table's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Snapshot file layout: magic `RBPS` | producer count u32 LE | per
/// producer: id i64, epoch i16, last seen ms i64, batch count u8, per batch
/// first seq i32, last seq i32, base u64, next u64 (all LE) | CRC-32C u32
/// LE of everything between the magic and the CRC.
const SNAPSHOT_MAGIC: [u8; 4] = *b"RBPS";
const SNAPSHOT_ENTRY_BYTES: usize = 8 + 2 + 8 + 1;
const SNAPSHOT_BATCH_BYTES: usize = 4 + 4 + 8 + 8;

impl ProducerTable {
    /// The table as a snapshot file's bytes.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.entries.len() * (SNAPSHOT_ENTRY_BYTES + 5 * SNAPSHOT_BATCH_BYTES));
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut ids: Vec<&i64> = self.entries.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let entry = &self.entries[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&entry.epoch.to_le_bytes());
            out.extend_from_slice(&entry.last_seen_ms.to_le_bytes());
            out.push(entry.batches.len() as u8);
            for batch in &entry.batches {
                out.extend_from_slice(&batch.first_seq.to_le_bytes());
                out.extend_from_slice(&batch.last_seq.to_le_bytes());
                out.extend_from_slice(&batch.base.get().to_le_bytes());
                out.extend_from_slice(&batch.next.get().to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out[4..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// A table from a snapshot file's bytes; `None` if they are damaged,
    /// or hold more producers than `producers_max` or more batches than kept.
    pub fn decode_snapshot(bytes: &[u8], producers_max: usize, expiry_ms: i64) -> Option<ProducerTable> {
        let body = bytes.strip_prefix(&SNAPSHOT_MAGIC)?;
        let (body, crc) = body.split_last_chunk::<4>()?;
        if crc32c::crc32c(body).to_le_bytes() != *crc {
            return None;
        }
        let mut rest = body;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        if count > producers_max.max(1) {
            return None;
        }
        let mut table = ProducerTable::new(producers_max, expiry_ms);
        for _ in 0..count {
            let id = i64::from_le_bytes(take(8)?.try_into().ok()?);
            let epoch = i16::from_le_bytes(take(2)?.try_into().ok()?);
            let last_seen_ms = i64::from_le_bytes(take(8)?.try_into().ok()?);
            let batch_count = usize::from(take(1)?[0]);
            if batch_count > BATCHES_KEPT {
                return None;
            }
            let mut batches = VecDeque::with_capacity(batch_count);
            for _ in 0..batch_count {
                let first_seq = i32::from_le_bytes(take(4)?.try_into().ok()?);
                let last_seq = i32::from_le_bytes(take(4)?.try_into().ok()?);
                let base = Offset::new(u64::from_le_bytes(take(8)?.try_into().ok()?))?;
                let next = Offset::new(u64::from_le_bytes(take(8)?.try_into().ok()?))?;
                batches.push_back(ProducedBatch { first_seq, last_seq, base, next });
            }
            table.entries.insert(id, Entry { epoch, batches, last_seen_ms });
        }
        rest.is_empty().then_some(table)
    }
}

/// `seq + n`, wrapping from `i32::MAX` to 0 as Kafka's sequences do.
fn add_seq(seq: i32, n: u32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// How far `a` lies before `b` in wrapping sequence space (negative: after).
fn seq_distance(a: i32, b: i32) -> i64 {
    let span = i64::from(i32::MAX) + 1;
    let forward = (i64::from(b) - i64::from(a)).rem_euclid(span);
    if forward <= span / 2 {
        forward
    } else {
        forward - span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(producer_id: i64, epoch: i16, first_seq: i32, count: u32) -> ProducerFields {
        ProducerFields { producer_id, epoch, first_seq, count }
    }

    fn offset(value: u64) -> Offset {
        Offset::new(value).unwrap()
    }

    /// Appends what `check` allows and records it; returns the verdict.
    fn offer(table: &mut ProducerTable, batch: ProducerFields, end: &mut u64) -> Result<Verdict, SequenceError> {
        let verdict = table.check(&batch)?;
        if verdict == Verdict::Append {
            let base = *end;
            *end += u64::from(batch.count);
            table.record(&batch, offset(base), offset(*end), 0);
        }
        Ok(verdict)
    }

    #[test]
    fn a_retry_gets_its_original_offsets_and_a_gap_is_refused() {
        let mut table = ProducerTable::new(16, 60_000);
        let mut end = 0;
        assert_eq!(offer(&mut table, fields(7, 0, 0, 3), &mut end), Ok(Verdict::Append));
        assert_eq!(offer(&mut table, fields(7, 0, 3, 2), &mut end), Ok(Verdict::Append));
        // The first batch again (its ack was lost).
        let original = ProducedBatch { first_seq: 0, last_seq: 2, base: offset(0), next: offset(3) };
        assert_eq!(offer(&mut table, fields(7, 0, 0, 3), &mut end), Ok(Verdict::Duplicate(original)));
        assert_eq!(end, 5, "nothing stored twice");
        // A gap: sequence 6 where 5 comes next.
        assert_eq!(
            offer(&mut table, fields(7, 0, 6, 1), &mut end),
            Err(SequenceError::OutOfOrder { producer_id: 7, expected: 5, got: 6 })
        );
        // Another producer is independent.
        assert_eq!(offer(&mut table, fields(8, 0, 0, 1), &mut end), Ok(Verdict::Append));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn epochs_fence_old_producers_and_start_sequences_over() {
        let mut table = ProducerTable::new(16, 60_000);
        let mut end = 0;
        offer(&mut table, fields(1, 3, 0, 1), &mut end).unwrap();
        offer(&mut table, fields(1, 3, 1, 1), &mut end).unwrap();
        assert_eq!(
            offer(&mut table, fields(1, 2, 2, 1), &mut end),
            Err(SequenceError::Fenced { producer_id: 1, current: 3, got: 2 })
        );
        assert_eq!(
            offer(&mut table, fields(1, 4, 2, 1), &mut end),
            Err(SequenceError::OutOfOrder { producer_id: 1, expected: 0, got: 2 }),
            "a new epoch starts at 0"
        );
        assert_eq!(offer(&mut table, fields(1, 4, 0, 1), &mut end), Ok(Verdict::Append));
        // The old epoch is fenced now.
        assert!(matches!(offer(&mut table, fields(1, 3, 2, 1), &mut end), Err(SequenceError::Fenced { .. })));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut table = ProducerTable::new(16, 60_000);
        let mut end = 0;
        for seq in 0..8 {
            offer(&mut table, fields(5, 0, seq, 1), &mut end).unwrap();
        }
        for seq in 3..8 {
            assert!(matches!(offer(&mut table, fields(5, 0, seq, 1), &mut end), Ok(Verdict::Duplicate(_))), "{seq}");
        }
        assert_eq!(
            offer(&mut table, fields(5, 0, 1, 1), &mut end),
            Err(SequenceError::OldDuplicate { producer_id: 5, got: 1 })
        );
        assert_eq!(end, 8);
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        let mut table = ProducerTable::new(16, 60_000);
        let mut end = 0;
        offer(&mut table, fields(9, 0, i32::MAX - 1, 2), &mut end).unwrap();
        assert_eq!(offer(&mut table, fields(9, 0, 0, 5), &mut end), Ok(Verdict::Append), "0 follows i32::MAX");
        assert!(matches!(offer(&mut table, fields(9, 0, i32::MAX - 1, 2), &mut end), Ok(Verdict::Duplicate(_))));
        assert_eq!(offer(&mut table, fields(9, 0, 5, 1), &mut end), Ok(Verdict::Append));
    }

    #[test]
    fn a_snapshot_reads_back_as_the_table_and_damage_is_refused() {
        let mut table = ProducerTable::new(16, 60_000);
        let mut end = 0;
        for producer in 1..4 {
            for seq in 0..7 {
                offer(&mut table, fields(producer, 2, seq * 2, 2), &mut end).unwrap();
            }
        }
        let bytes = table.encode_snapshot();
        let read = ProducerTable::decode_snapshot(&bytes, 16, 60_000).unwrap();
        assert_eq!(read.encode_snapshot(), bytes);
        let retry = fields(2, 2, 12, 2);
        assert_eq!(read.check(&retry), table.check(&retry));
        assert!(matches!(read.check(&retry), Ok(Verdict::Duplicate(_))));
        for cut in 0..bytes.len() {
            assert!(ProducerTable::decode_snapshot(&bytes[..cut], 16, 60_000).is_none(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert!(ProducerTable::decode_snapshot(&flipped, 16, 60_000).is_none());
        assert!(ProducerTable::decode_snapshot(&bytes, 2, 60_000).is_none(), "more producers than allowed");
    }

    #[test]
    fn producers_expire_and_the_table_stays_bounded() {
        let mut table = ProducerTable::new(3, 1_000);
        for (producer_id, at) in [(1, 0), (2, 10), (3, 20)] {
            table.record(&fields(producer_id, 0, 0, 1), offset(0), offset(1), at);
        }
        // A fourth producer pushes out the one heard from longest ago.
        table.record(&fields(4, 0, 0, 1), offset(1), offset(2), 30);
        assert_eq!(table.len(), 3);
        assert_eq!(table.check(&fields(1, 0, 5, 1)), Ok(Verdict::Append), "1 is forgotten: any sequence goes");
        assert!(matches!(table.check(&fields(2, 0, 5, 1)), Err(SequenceError::OutOfOrder { .. })));
        table.expire(1_025);
        assert_eq!(table.len(), 1, "only producer 4 was heard from within the last second");
    }

    proptest::proptest! {
        /// A producer's batches, each sent one or more times in order (a
        /// retry follows its original before the next batch, as with one
        /// batch in flight): every batch stored exactly once, every retry
        /// answered with the original offsets.
        #[test]
        fn retries_never_store_twice(
            sizes in proptest::collection::vec((1u32..50, 0usize..3), 1..40),
            start in 0..i32::MAX,
        ) {
            let mut table = ProducerTable::new(8, 60_000);
            let mut end = 0u64;
            let mut seq = start;
            for (count, retries) in sizes {
                let batch = fields(42, 0, seq, count);
                let base = end;
                proptest::prop_assert_eq!(offer(&mut table, batch, &mut end), Ok(Verdict::Append));
                for _ in 0..retries {
                    let stored = ProducedBatch { first_seq: seq, last_seq: batch.last_seq(), base: offset(base), next: offset(end) };
                    proptest::prop_assert_eq!(offer(&mut table, batch, &mut end), Ok(Verdict::Duplicate(stored)));
                }
                seq = add_seq(seq, count);
            }
        }
    }
}
