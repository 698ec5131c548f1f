//! ringbroker: a partitioned, append-only log broker built thread-per-core on
//! io_uring (glommio).
//!
//! Layers, each depending only on those listed before it:
//! - [`protocol`]: pure data formats (record batches, typed ids), no I/O.
//! - [`storage`]: the durable partition log on O_DIRECT segment files.
//!
//! See `ARCHITECTURE.md` for the map and the invariants.
pub mod client;
pub mod config;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod storage;
