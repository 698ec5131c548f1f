//! The protocol layer: pure data formats, no I/O.
//!
//! Everything here can be tested without a runtime, a disk or a socket:
//! typed ids and units, the Kafka RecordBatch v2 codec that is the unit of
//! data both on the wire and on disk, and the native wire protocol's frames
//! and messages.
pub mod acl;
pub mod batch;
pub mod chunks;
pub mod compression;
pub mod kafka;
pub mod partitioner;
pub mod scram;
pub mod types;
pub mod varint;
pub mod wire;
