//! Settings of one partition log, with their checked ranges.

use super::error::{Result, StorageError};
use super::io::{SyncMethod, ALIGN};

/// When the log makes its writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Group commit: each write is made durable before the next is issued
    /// (how: [`LogConfig::sync`]); everything appended while one is in
    /// flight goes out in the next.
    EveryBatch,
    /// Writes go out as soon as data is appended, fdatasync at most every
    /// `interval_ms`: durability lags by at most that much plus one sync.
    Interval { interval_ms: u64 },
}

/// Upper bound on `write_bytes_max`.
pub const WRITE_BYTES_LIMIT: usize = 8 << 20;

/// Settings of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment is rolled before it would grow past this size.
    pub segment_bytes_max: u64,
    /// A segment older than this is rolled at the next append (`None`:
    /// never). Age counts from when this process created or opened it.
    pub segment_age_max_ms: Option<u64>,
    /// One sparse index entry per this many log bytes.
    pub index_interval_bytes: u32,
    /// Most bytes of appends pending for the flusher; appends wait while
    /// this much is pending. Also bounds the bytes written but not yet
    /// synced, and so the region a crash can tear (see [`LogConfig::torn_window_bytes`]).
    pub write_bytes_max: usize,
    /// Largest single write request; a flush issues its data as several
    /// requests of this size, all in flight at once. A multiple of 4096.
    /// Several moderate requests keep the device busier than one huge one
    /// (fio here: 1 MiB requests beat 8 MiB ones by about 15%).
    pub write_request_bytes: usize,
    /// Largest batch accepted (12-byte log overhead included).
    pub batch_bytes_max: usize,
    /// Recent batches kept in memory to serve readers at the tail.
    pub tail_cache_bytes: usize,
    pub flush: FlushPolicy,
    /// How each write is made durable under [`FlushPolicy::EveryBatch`]:
    /// segment files opened with `O_DSYNC` (the write completes durable), or
    /// an fdatasync after the write. The interval policy always writes
    /// without `O_DSYNC` and syncs on its timer.
    pub sync: SyncMethod,
    /// Delete old segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Reserve each new segment's full size when it is created, so a full
    /// disk shows at roll time instead of in the middle of an append.
    pub preallocate: bool,
    /// Idempotent producers remembered per partition (see `producers`).
    pub producers_max: usize,
    /// A producer unheard of for this long is forgotten.
    pub producer_expiry_ms: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes_max: 256 << 20,
            segment_age_max_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            write_bytes_max: 2 << 20,
            write_request_bytes: 1 << 20,
            batch_bytes_max: 1 << 20,
            tail_cache_bytes: 8 << 20,
            flush: FlushPolicy::EveryBatch,
            sync: SyncMethod::Fdatasync,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            preallocate: true,
            producers_max: 1024,
            producer_expiry_ms: 24 * 3600 * 1000,
        }
    }
}

/// The settings of a running log that a topic's configuration may change
/// (see [`crate::storage::PartitionLog::set_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub segment_bytes_max: u64,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
}

impl LogConfig {
    pub fn limits(&self) -> LogLimits {
        LogLimits {
            segment_bytes_max: self.segment_bytes_max,
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
        }
    }

    pub fn with_limits(mut self, limits: LogLimits) -> LogConfig {
        self.segment_bytes_max = limits.segment_bytes_max;
        self.retention_bytes = limits.retention_bytes;
        self.retention_ms = limits.retention_ms;
        self
    }

    /// How writes to segment files become durable: [`LogConfig::sync`]
    /// under the every-batch policy, fdatasync under the interval policy.
    pub fn segment_sync(&self) -> SyncMethod {
        match self.flush {
            FlushPolicy::EveryBatch => self.sync,
            FlushPolicy::Interval { .. } => SyncMethod::Fdatasync,
        }
    }

    /// How far past the start of the first damaged batch a crash can have
    /// left bytes: the unsynced region is at most `write_bytes_max` of new
    /// data plus the rewritten partial block before it and the zero padding
    /// after it. Recovery treats damage whose trailing bytes all lie within
    /// this window as a torn tail. Lowering `write_bytes_max` across a crash
    /// makes recovery stricter, never looser.
    pub fn torn_window_bytes(&self) -> u64 {
        super::io::align_up(self.write_bytes_max as u64) + 2 * ALIGN
    }

    /// Checks the settings against each other and against the format's limits.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(StorageError::Config(message));
        if self.batch_bytes_max < crate::protocol::batch::HEADER_LEN {
            return fail(format!("batch_bytes_max {} is below the batch header size", self.batch_bytes_max));
        }
        if self.write_bytes_max > WRITE_BYTES_LIMIT {
            return fail(format!("write_bytes_max {} exceeds {WRITE_BYTES_LIMIT}", self.write_bytes_max));
        }
        if self.write_request_bytes == 0 || !(self.write_request_bytes as u64).is_multiple_of(ALIGN) {
            return fail(format!(
                "write_request_bytes {} must be a positive multiple of {ALIGN}",
                self.write_request_bytes
            ));
        }
        // One batch plus the carried partial block must fit one write.
        if self.batch_bytes_max + ALIGN as usize > self.write_bytes_max {
            return fail(format!(
                "batch_bytes_max {} must be at least {ALIGN} below write_bytes_max {}",
                self.batch_bytes_max, self.write_bytes_max
            ));
        }
        // Index entries store positions as u32.
        if self.segment_bytes_max > u64::from(u32::MAX) || self.segment_bytes_max < self.batch_bytes_max as u64 {
            return fail(format!(
                "segment_bytes_max {} must lie between batch_bytes_max and 4 GiB",
                self.segment_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        if self.producers_max == 0 || self.producer_expiry_ms == 0 {
            return fail("producers_max and producer_expiry_ms must be positive".into());
        }
        if let FlushPolicy::Interval { interval_ms: 0 } = self.flush {
            return fail("flush interval must be positive (use every-batch instead)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        LogConfig::default().validate().unwrap();
    }

    #[test]
    fn a_batch_that_cannot_fit_one_write_is_rejected() {
        let config = LogConfig { batch_bytes_max: 1 << 20, write_bytes_max: 1 << 20, ..LogConfig::default() };
        assert!(matches!(config.validate(), Err(StorageError::Config(_))));
    }

    #[test]
    fn oversized_segments_are_rejected() {
        let config = LogConfig { segment_bytes_max: 8 << 30, ..LogConfig::default() };
        assert!(matches!(config.validate(), Err(StorageError::Config(_))));
    }
}
