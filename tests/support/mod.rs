//! Shared helpers for the integration tests: small glommio executors,
//! temp dirs on the real disk, and record batch builders.
#![allow(dead_code)]

pub mod broker;
pub mod certs;
pub mod clients;
pub mod kafka;

use std::future::Future;
use std::path::PathBuf;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use ringbroker::protocol::batch::{BatchBuilder, Record};
use ringbroker::protocol::wire;

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

/// Reads one frame from a blocking socket: its head and decoded header.
pub fn read_frame(stream: &mut std::net::TcpStream) -> std::io::Result<(wire::FrameHead, wire::Response)> {
    use std::io::Read;
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let len = wire::frame_len(prefix, 64 << 20).map_err(std::io::Error::other)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let (head, header, _) = wire::split_frame(BytesMut::from(&body[..])).map_err(std::io::Error::other)?;
    Ok((head, wire::decode_header(&header).map_err(std::io::Error::other)?))
}

/// Reads the notice a broker sends before closing a connection it refuses
/// or evicts, and checks that the connection is then closed.
pub fn read_notice(stream: &mut std::net::TcpStream) -> wire::ErrorResponse {
    use std::io::Read;
    let (head, response) = read_frame(stream).expect("a notice frame");
    assert_eq!(head.kind, wire::FrameKind::Notice, "expected a notice, got {response:?}");
    let wire::Response::Error(notice) = response else { panic!("a notice carries an error, got {response:?}") };
    let mut rest = [0u8; 16];
    assert!(matches!(stream.read(&mut rest), Ok(0) | Err(_)), "the connection is closed after the notice");
    notice
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

/// Runs the `ringbroker` CLI against the broker at `addr` with `stdin`,
/// asserts it succeeded, and returns what it printed.
pub fn cli(addr: std::net::SocketAddr, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ringbroker");
    child.stdin.take().expect("piped stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    let output = child.wait_with_output().expect("waiting for ringbroker");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8 output")
}
