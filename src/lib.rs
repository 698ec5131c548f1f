//! ringbroker: a partitioned, append-only log broker built thread-per-core on
//! io_uring (glommio).
//!
//! Layers, each depending only on those listed before it:
//! - [`runtime`]: glommio helpers (a local notify, the wake ticker).
//! - [`protocol`]: pure data formats (record batches, typed ids), no I/O.
//! - [`storage`]: the durable partition log on O_DIRECT segment files.
//! - [`shard`]: the per-core services; [`server`]: executors and listeners.
//! - [`client`]: the native client, on `protocol` only.
//!
//! See `ARCHITECTURE.md` for the map and the invariants.
pub mod client;
pub mod config;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod storage;
