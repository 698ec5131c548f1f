//! Shared helpers for the integration tests: small glommio executors,
//! temp dirs on the real disk, and record batch builders.
#![allow(dead_code)]

pub mod broker;

use std::future::Future;
use std::path::PathBuf;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use ringbroker::protocol::batch::{BatchBuilder, Record};

/// Runs `make()` to completion on a fresh, small glommio executor.
pub fn run<T, Fut>(make: impl FnOnce() -> Fut + Send + 'static) -> T
where
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(32)
        .spawn(make)
        .expect("starting a test executor")
        .join()
        .expect("test executor panicked")
}

/// A temp dir on the real disk (under the target dir, not tmpfs).
pub fn temp_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new().prefix("rb-test-").tempdir_in(base).expect("creating temp dir")
}

/// A batch with one record per value, keys `k<i>`, timestamps from `ts`.
pub fn batch_at(values: &[&[u8]], ts: i64) -> BytesMut {
    let keys: Vec<Vec<u8>> = (0..values.len()).map(|i| format!("k{i}").into_bytes()).collect();
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new(&mut out, ts);
    for (value, key) in values.iter().zip(&keys) {
        builder.push(&Record { timestamp_ms: ts, key: Some(key), value: Some(value), headers: &[] });
    }
    BytesMut::from(builder.finish())
}

pub fn batch(values: &[&[u8]]) -> BytesMut {
    batch_at(values, 1_764_000_000_000)
}

/// A batch of `count` records whose values are `tag:i` padded to `value_len` bytes.
pub fn numbered_batch(tag: u64, count: usize, value_len: usize) -> BytesMut {
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut value = format!("{tag}:{i}:").into_bytes();
            value.resize(value_len.max(value.len()), b'.');
            value
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    batch(&refs)
}

/// A simple deterministic generator for seeded random tests.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Seed from RB_TEST_SEED or the clock; the caller prints it.
    pub fn from_env() -> Rng {
        let seed = std::env::var("RB_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}
