//! The storage layer: one durable, append-only log per partition.
//!
//! A [`PartitionLog`] stores Kafka RecordBatch v2 batches in segment files
//! written with O_DIRECT, indexes them sparsely by offset and time, serves
//! recent data from memory and older data from disk, recovers after a crash
//! (trimming a torn tail, refusing corruption), and deletes old segments by
//! size and age. It knows nothing about sockets or other cores.
//!
//! Everything runs on one glommio executor thread; the log is generic over
//! the [`io::Storage`] seam so tests can swap the disk for a simulated one.

pub mod config;
pub mod dma;
pub mod error;
pub mod index;
pub mod io;
pub mod lock;
pub mod log;
mod log_start;
pub mod producers;
pub mod recovery;
mod segment;
pub mod sim;
pub mod space;

pub use config::{FlushPolicy, LogConfig, LogLimits};
pub use error::StorageError;
pub use lock::DirLock;
pub use log::{
    AppendReceipt, CheckedBatch, FlushObserver, FlushStage, LogStats, OpenOptions, PartitionLog, ReadOutcome, ReadSink,
};
pub use recovery::RecoveryMode;
pub use segment::PREALLOCATE_BYTES_FIRST;
pub use space::free_bytes;
