//! What every loadgen event carries, and how consumers check that nothing
//! was lost or delivered twice.
//!
//! An event's value starts with a fixed 24-byte header — a magic tag, the
//! producer id, the producer's sequence number and the send time — followed
//! by padding up to the configured size. The header makes each event
//! identifiable, so correctness is checked on the very data whose latency is
//! measured, not on a side channel.
//!
//! The tracker keeps one bit per planned event per producer (memory is fixed
//! at start: N bits for N events). Trackers of different threads merge by OR,
//! counting a bit set on both sides as a duplicate, so no thread ever needs
//! to see another's events while the run is going.

/// Bytes of the header; events are at least this large.
pub const HEADER_BYTES: usize = 24;

/// Marks a loadgen event, so a foreign record is reported, not misread.
const MAGIC: [u8; 4] = *b"RBLG";

/// The identifying part of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    pub producer: u32,
    pub seq: u64,
    /// When the event was (meant to be) sent, in microseconds since the Unix
    /// epoch. Open-loop scenarios put the intended send time here, so the
    /// end-to-end latency is coordinated-omission corrected too.
    pub sent_unix_us: u64,
}

/// A value buffer of `size` bytes (at least [`HEADER_BYTES`]) whose padding
/// is already written; each event then only rewrites the header, so
/// producing allocates nothing per event.
pub fn new_value(size: usize) -> Vec<u8> {
    assert!(size >= HEADER_BYTES, "events must be at least {HEADER_BYTES} bytes");
    // A repeating, non-zero pattern: the broker cannot benefit from zeroes
    // (no compression here, but honest bytes cost nothing).
    (0..size).map(|index| b'a' + (index % 26) as u8).collect()
}

/// Writes `header` into the first [`HEADER_BYTES`] of `value`.
pub fn encode(value: &mut [u8], header: &EventHeader) {
    value[0..4].copy_from_slice(&MAGIC);
    value[4..8].copy_from_slice(&header.producer.to_le_bytes());
    value[8..16].copy_from_slice(&header.seq.to_le_bytes());
    value[16..24].copy_from_slice(&header.sent_unix_us.to_le_bytes());
}

/// Reads an event's header; `None` for anything that is not a loadgen event.
pub fn decode(value: &[u8]) -> Option<EventHeader> {
    let header: &[u8; HEADER_BYTES] = value.get(..HEADER_BYTES)?.try_into().ok()?;
    if header[0..4] != MAGIC {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    Some(EventHeader {
        producer: u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")),
        seq: u64_at(8),
        sent_unix_us: u64_at(16),
    })
}

/// A fixed-size set of sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    /// Room for `0..len`.
    pub fn new(len: u64) -> Bitmap {
        Bitmap { words: vec![0; len.div_ceil(64) as usize], len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Sets bit `index` and says whether it was already set. Precondition:
    /// `index < len`.
    pub fn insert(&mut self, index: u64) -> bool {
        debug_assert!(index < self.len);
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        let was_set = self.words[word] & bit != 0;
        self.words[word] |= bit;
        was_set
    }

    #[cfg(test)]
    pub fn contains(&self, index: u64) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|word| u64::from(word.count_ones())).sum()
    }

    /// Members of `self` that are not in `other` (both of the same length).
    pub fn count_missing_from(&self, other: &Bitmap) -> u64 {
        assert_eq!(self.len, other.len, "bitmaps of different producers");
        self.words.iter().zip(&other.words).map(|(mine, theirs)| u64::from((mine & !theirs).count_ones())).sum()
    }

    /// Adds `other`'s members and returns how many were members of both.
    pub fn union_with(&mut self, other: &Bitmap) -> u64 {
        assert_eq!(self.len, other.len, "bitmaps of different producers");
        let mut both = 0;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            both += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        both
    }
}

/// What one consumed event turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Duplicate,
    /// Not a loadgen event of this run: bad magic, unknown producer or a
    /// sequence beyond what the producer planned to send.
    Foreign,
}

/// Which events of each producer were consumed, with duplicate and foreign
/// counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqTracker {
    /// Indexed by producer id; sized by each producer's planned event count.
    consumed: Vec<Bitmap>,
    duplicates: u64,
    foreign: u64,
}

impl SeqTracker {
    /// A tracker for producers `0..planned.len()`, producer `i` sending
    /// sequences `0..planned[i]`.
    pub fn new(planned: &[u64]) -> SeqTracker {
        SeqTracker { consumed: planned.iter().map(|&count| Bitmap::new(count)).collect(), duplicates: 0, foreign: 0 }
    }

    /// Records one consumed event's header (`None`: not decodable).
    pub fn observe(&mut self, header: Option<&EventHeader>) -> Seen {
        let Some(header) = header else {
            self.foreign += 1;
            return Seen::Foreign;
        };
        match self.consumed.get_mut(header.producer as usize) {
            Some(bitmap) if header.seq < bitmap.len() => {
                if bitmap.insert(header.seq) {
                    self.duplicates += 1;
                    Seen::Duplicate
                } else {
                    Seen::First
                }
            }
            _ => {
                self.foreign += 1;
                Seen::Foreign
            }
        }
    }

    /// Folds in another thread's tracker; an event both consumed counts as
    /// a duplicate.
    pub fn merge(&mut self, other: &SeqTracker) {
        assert_eq!(self.consumed.len(), other.consumed.len(), "trackers of different runs");
        for (mine, theirs) in self.consumed.iter_mut().zip(&other.consumed) {
            self.duplicates += mine.union_with(theirs);
        }
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
    }

    /// Distinct events consumed.
    pub fn unique(&self) -> u64 {
        self.consumed.iter().map(Bitmap::count).sum()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn foreign(&self) -> u64 {
        self.foreign
    }

    /// Events in `acked[producer]` that were never consumed.
    pub fn missing(&self, producer: u32, acked: &Bitmap) -> u64 {
        self.consumed.get(producer as usize).map_or(acked.count(), |consumed| acked.count_missing_from(consumed))
    }

    /// The consumed set of one producer.
    #[cfg(test)]
    pub fn consumed(&self, producer: u32) -> Option<&Bitmap> {
        self.consumed.get(producer as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(producer: u32, seq: u64) -> EventHeader {
        EventHeader { producer, seq, sent_unix_us: 1_764_000_000_000_000 + seq }
    }

    #[test]
    fn headers_round_trip_and_padding_is_kept() {
        let mut value = new_value(100);
        let padding = value[HEADER_BYTES..].to_vec();
        let sent = EventHeader { producer: 7, seq: u64::MAX - 1, sent_unix_us: 1_764_000_000_123_456 };
        encode(&mut value, &sent);
        assert_eq!(value.len(), 100);
        assert_eq!(decode(&value), Some(sent));
        assert_eq!(value[HEADER_BYTES..], padding[..]);
        // Exactly the header size works; shorter or foreign values do not decode.
        let mut small = new_value(HEADER_BYTES);
        encode(&mut small, &sent);
        assert_eq!(decode(&small), Some(sent));
        assert_eq!(decode(&small[..HEADER_BYTES - 1]), None);
        small[0] = b'X';
        assert_eq!(decode(&small), None);
    }

    #[test]
    fn tracker_counts_firsts_duplicates_and_foreign_events() {
        let mut tracker = SeqTracker::new(&[10, 3]);
        assert_eq!(tracker.observe(Some(&header(0, 0))), Seen::First);
        assert_eq!(tracker.observe(Some(&header(0, 9))), Seen::First);
        assert_eq!(tracker.observe(Some(&header(0, 9))), Seen::Duplicate);
        assert_eq!(tracker.observe(Some(&header(1, 2))), Seen::First);
        assert_eq!(tracker.observe(Some(&header(1, 3))), Seen::Foreign, "beyond the plan");
        assert_eq!(tracker.observe(Some(&header(2, 0))), Seen::Foreign, "unknown producer");
        assert_eq!(tracker.observe(None), Seen::Foreign);
        assert_eq!((tracker.unique(), tracker.duplicates(), tracker.foreign()), (3, 1, 3));
    }

    #[test]
    fn gaps_show_as_missing_acked_events() {
        let mut tracker = SeqTracker::new(&[100]);
        let mut acked = Bitmap::new(100);
        for seq in 0..100 {
            acked.insert(seq);
            // Events 40 and 77 never arrive.
            if seq != 40 && seq != 77 {
                tracker.observe(Some(&header(0, seq)));
            }
        }
        assert_eq!(tracker.missing(0, &acked), 2);
        assert!(!tracker.consumed(0).unwrap().contains(40));
        // An event consumed but never acked (its ack was lost) is not missing.
        let mut partly_acked = Bitmap::new(100);
        partly_acked.insert(1);
        assert_eq!(tracker.missing(0, &partly_acked), 0);
    }

    #[test]
    fn merging_trackers_counts_cross_thread_duplicates() {
        let mut left = SeqTracker::new(&[200, 5]);
        let mut right = SeqTracker::new(&[200, 5]);
        for seq in 0..120 {
            left.observe(Some(&header(0, seq)));
        }
        for seq in 100..200 {
            right.observe(Some(&header(0, seq)));
        }
        right.observe(Some(&header(1, 4)));
        right.observe(Some(&header(1, 4)));
        left.merge(&right);
        // 100..120 were seen by both threads, plus one duplicate within `right`.
        assert_eq!((left.unique(), left.duplicates()), (201, 21));
    }

    #[test]
    fn bitmap_edges() {
        let mut bitmap = Bitmap::new(65);
        assert!(!bitmap.insert(64));
        assert!(bitmap.insert(64));
        assert!(bitmap.contains(64) && !bitmap.contains(63) && !bitmap.contains(65));
        assert_eq!(bitmap.count(), 1);
        assert_eq!(Bitmap::new(0).count(), 0);
    }
}
