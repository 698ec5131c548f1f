//! Errors of the storage layer.

use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use crate::protocol::types::{FilePos, Offset};

/// What can go wrong in a partition log. Small and specific: the server maps
/// each variant to a stable wire error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// An I/O operation failed. `Rc` because one failed flush fails every
    /// append waiting on it.
    #[error("{op} {}: {error}", path.display())]
    Io { op: &'static str, path: PathBuf, error: Rc<io::Error> },

    /// The disk (or the simulated disk) is full. Nothing partial became
    /// visible; the append may be retried once space frees up.
    #[error("no space left on device: {op} {path}")]
    NoSpace { op: &'static str, path: PathBuf },

    /// Bytes on disk are damaged somewhere other than a torn tail. Found at
    /// open, the partition is refused (quarantined) until an operator
    /// decides; found by a read (in a sealed segment), that read fails.
    #[error("corrupt log {path} at {pos} (offset {offset}): {reason}")]
    Corrupt { path: PathBuf, pos: FilePos, offset: Offset, reason: String },

    /// A write or fdatasync failed earlier; the log accepts nothing more
    /// until it is reopened and recovered from disk.
    #[error("partition log is poisoned by an earlier I/O failure: {0}")]
    Poisoned(Rc<StorageError>),

    /// A read asked for an offset the log does not hold.
    #[error("offset {requested} is outside the log [{start}, {end})")]
    OffsetOutOfRange { requested: Offset, start: Offset, end: Offset },

    /// A batch larger than the configured limit.
    #[error("batch of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    BatchTooLarge { len_bytes: usize, max_bytes: usize },

    /// An append carried more (or other) bytes than the one batch it starts with.
    #[error("append of {len_bytes} bytes holds a batch of {batch_bytes} bytes and more")]
    NotOneBatch { len_bytes: usize, batch_bytes: usize },

    /// A batch that does not validate.
    #[error("invalid record batch: {0}")]
    InvalidBatch(crate::protocol::batch::BatchError),

    /// An idempotent producer's batch that may not be appended.
    #[error("{0}")]
    Sequence(super::producers::SequenceError),

    /// The log has been closed.
    #[error("partition log is closed")]
    Closed,

    /// The data directory is locked by another process.
    #[error("data directory {path} is in use by another process (lock file {lock})")]
    Locked { path: PathBuf, lock: PathBuf },

    /// The configuration cannot work.
    #[error("invalid storage configuration: {0}")]
    Config(String),
}

// The batch error is part of the message, so it is not also `source()`
// (a report that walks the chain would print it twice).
impl From<crate::protocol::batch::BatchError> for StorageError {
    fn from(error: crate::protocol::batch::BatchError) -> StorageError {
        StorageError::InvalidBatch(error)
    }
}

impl StorageError {
    /// Wraps an I/O error, recognising a full disk.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull {
            return StorageError::NoSpace { op, path };
        }
        StorageError::Io { op, path, error: Rc::new(source) }
    }

    /// Whether trying the same operation again later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StorageError::NoSpace { .. })
    }
}

/// The result type of the storage layer.
pub type Result<T> = std::result::Result<T, StorageError>;
