//! Typed identifiers and units shared by every layer.
//!
//! Offsets, file positions and ids are all integers underneath; giving each a
//! type of its own lets the compiler catch an offset passed where a byte
//! position was meant. Constructors check ranges where a range exists.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The position of a record in a partition's log: 0 for the first record ever
/// appended, one more for each record after it. Offsets never repeat and never
/// go backwards.
///
/// Kafka's wire format stores offsets as `i64`; only the non-negative half is
/// ever used, so `Offset` holds a `u64` below `i64::MAX` and converts at the
/// edge ([`Offset::from_wire`], [`Offset::to_wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Offset(u64);

/// A value too large for an [`Offset`] (above `i64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset {0} exceeds the largest offset")]
pub struct OffsetRangeError(pub u64);

impl TryFrom<u64> for Offset {
    type Error = OffsetRangeError;
    fn try_from(value: u64) -> Result<Offset, OffsetRangeError> {
        Offset::new(value).ok_or(OffsetRangeError(value))
    }
}

impl From<Offset> for u64 {
    fn from(offset: Offset) -> u64 {
        offset.0
    }
}

impl Offset {
    /// The largest offset a log may hold (the wire field is a signed 64-bit integer).
    pub const MAX: Offset = Offset(i64::MAX as u64);
    pub const ZERO: Offset = Offset(0);

    /// Returns `None` when `value` does not fit the wire format.
    ///
    /// ```
    /// use ringbroker::protocol::types::Offset;
    /// assert_eq!(Offset::new(7).map(Offset::get), Some(7));
    /// assert_eq!(Offset::new(u64::MAX), None);
    /// ```
    pub fn new(value: u64) -> Option<Offset> {
        (value <= Self::MAX.0).then_some(Offset(value))
    }

    /// Converts the signed wire representation; negative values are rejected.
    pub fn from_wire(value: i64) -> Option<Offset> {
        u64::try_from(value).ok().map(Offset)
    }

    pub fn to_wire(self) -> i64 {
        // Invariant: self.0 <= i64::MAX, checked by every constructor.
        self.0 as i64
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The offset `count` records later. Saturates at [`Offset::MAX`]; a log
    /// that full refuses appends before it gets there.
    pub fn plus(self, count: u64) -> Offset {
        Offset(self.0.saturating_add(count).min(Self::MAX.0))
    }

    /// How many records lie between `earlier` and `self` (0 if `earlier` is later).
    pub fn distance_from(self, earlier: Offset) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A partition number within a topic (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A shard: one executor pinned to one CPU. Shard ids run 0..shard_count
/// in the order the tuning file lists the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Longest topic name (Kafka's limit, so names stay portable).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Why a topic (or group) name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters")]
    Length,
    #[error("topic name {0:?} is reserved")]
    Reserved(String),
    #[error("topic name {name:?} contains {bad:?}; allowed are letters, digits, '.', '_' and '-'")]
    Character { name: String, bad: char },
}

/// Checks a topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, and not
/// `.` or `..` (names become directory names).
///
/// ```
/// use ringbroker::protocol::types::validate_topic_name;
/// assert!(validate_topic_name("orders.v2").is_ok());
/// assert!(validate_topic_name("../etc").is_err());
/// ```
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(TopicNameError::Length);
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Reserved(name.to_string()));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(TopicNameError::Character { name: name.to_string(), bad });
    }
    Ok(())
}

/// A byte position inside one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FilePos(pub u64);

impl fmt::Display for FilePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}", self.0)
    }
}

/// A timestamp in milliseconds since the Unix epoch, as carried by record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimestampMs(pub i64);

impl TimestampMs {
    /// The current wall-clock time.
    pub fn now() -> TimestampMs {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        TimestampMs(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }
}

/// How far a produce request waits before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub enum AckLevel {
    /// No acknowledgement at all: the producer does not wait.
    None,
    /// After the write of the batch to its segment file has completed
    /// (it may still sit in the device cache).
    Written,
    /// After an fdatasync issued after that write completed. The default.
    #[default]
    Durable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_range_is_checked_at_the_edges() {
        assert_eq!(Offset::from_wire(-1), None);
        assert_eq!(Offset::from_wire(0), Some(Offset::ZERO));
        assert_eq!(Offset::new(i64::MAX as u64 + 1), None);
        assert_eq!(Offset::new(i64::MAX as u64), Some(Offset::MAX));
        assert_eq!(Offset::MAX.plus(1), Offset::MAX);
        assert_eq!(Offset::new(7).unwrap().to_wire(), 7);
        assert_eq!(Offset::new(10).unwrap().distance_from(Offset::new(4).unwrap()), 6);
        assert_eq!(Offset::new(4).unwrap().distance_from(Offset::new(10).unwrap()), 0);
    }

    #[test]
    fn topic_names_follow_the_portable_rules() {
        assert!(validate_topic_name("orders.v2_eu-1").is_ok());
        for bad in ["", ".", "..", "a/b", "with space", "ü"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(TOPIC_NAME_BYTES_MAX)).is_ok());
        assert!(validate_topic_name(&"x".repeat(TOPIC_NAME_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn refusals_read_as_before() {
        let message = |name: &str| validate_topic_name(name).err().map(|error| error.to_string());
        assert_eq!(message("").as_deref(), Some("topic name must be 1 to 249 characters"));
        assert_eq!(message("..").as_deref(), Some("topic name \"..\" is reserved"));
        assert_eq!(
            message("a/b").as_deref(),
            Some("topic name \"a/b\" contains '/'; allowed are letters, digits, '.', '_' and '-'")
        );
        let too_large = Offset::try_from(u64::MAX).err().map(|error| error.to_string());
        assert_eq!(too_large.as_deref(), Some("offset 18446744073709551615 exceeds the largest offset"));
    }
}
