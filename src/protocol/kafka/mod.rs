//! The Kafka wire protocol, as far as the broker needs it without I/O:
//! the bounds check run on every request before it is decoded, and the
//! request layouts it checks against. Messages themselves are decoded and
//! encoded by the `kafka-protocol` crate.
pub mod bounds;
pub mod schemas;
