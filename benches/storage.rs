//! Durable append throughput of one partition log on one core.
//!
//! `cargo bench --bench storage` runs, for each batch size, appenders that
//! keep `IN_FLIGHT` batches of 1 KiB records outstanding and wait for durable
//! acks, so the flusher group-commits whatever arrives while a durable write
//! is in flight. Each case runs with both sync methods: O_DSYNC writes, and
//! a write followed by fdatasync. Prints MB/s, flushes, bytes per flush and
//! ack latency percentiles. The log lives under the target directory (real disk) and
//! the executor is pinned to CPU 0 (override with RB_BENCH_CPU).
//!
//! Compare with the device's O_DIRECT limit, e.g.
//! `fio --name=w --rw=write --direct=1 --bs=1M --ioengine=io_uring --iodepth=8 --size=2G`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringbroker::protocol::batch::{BatchBuilder, Record};
use ringbroker::protocol::types::AckLevel;
use ringbroker::storage::dma::DmaStorage;
use ringbroker::storage::io::SyncMethod;
use ringbroker::storage::{FlushPolicy, LogConfig, OpenOptions, PartitionLog};

const RECORD_BYTES: usize = 1024;
const IN_FLIGHT: usize = 32;
const SECONDS_PER_CASE: u64 = 4;

fn main() {
    let cpu = std::env::var("RB_BENCH_CPU").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let seconds = std::env::var("RB_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(SECONDS_PER_CASE);
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = tempfile::Builder::new().prefix("rb-bench-").tempdir_in(target).expect("temp dir");
    let path = dir.path().to_path_buf();
    println!(
        "durable append, 1 KiB records, {IN_FLIGHT} batches in flight, executor on CPU {cpu}, {seconds} s per case"
    );
    println!(
        "{:>10} {:>10} {:>10} {:>9} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "batch", "sync", "MB/s", "flushes/s", "KiB/flush", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(32 << 20)
        .spawn(move || async move {
            for (case, batch_kib) in [16usize, 64, 256].into_iter().enumerate() {
                for sync in [SyncMethod::Dsync, SyncMethod::Fdatasync] {
                    let dir = path.join(format!("case-{case}-{sync:?}"));
                    run_case(&dir, batch_kib << 10, sync, Duration::from_secs(seconds)).await;
                }
            }
        })
        .expect("executor")
        .join()
        .expect("bench panicked");
}

fn make_batch(batch_bytes: usize) -> BytesMut {
    let value = vec![0x5Au8; RECORD_BYTES];
    let mut out = Vec::with_capacity(batch_bytes + 4096);
    let mut builder = BatchBuilder::new(&mut out, 1_764_000_000_000);
    while builder.len_bytes() + RECORD_BYTES + 16 <= batch_bytes {
        builder.push(&Record { timestamp_ms: 1_764_000_000_000, key: None, value: Some(&value), headers: &[] });
    }
    BytesMut::from(builder.finish())
}

async fn run_case(dir: &std::path::Path, batch_bytes: usize, sync: SyncMethod, duration: Duration) {
    let storage = DmaStorage::new(dir).await.expect("dma storage");
    let config = LogConfig {
        segment_bytes_max: 1 << 30,
        write_bytes_max: 8 << 20,
        batch_bytes_max: 1 << 20,
        flush: FlushPolicy::EveryBatch,
        sync,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(storage, &dir.join("bench-0"), config, OpenOptions::default()).await.expect("open");
    let batch = make_batch(batch_bytes);
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let histogram = Rc::new(std::cell::RefCell::new(Histogram::<u64>::new(3).expect("histogram")));
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (log, batch, histogram) = (log.clone(), batch.clone(), Rc::clone(&histogram));
            glommio::spawn_local(async move {
                let mut bytes = 0u64;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    log.append_and_wait(batch.clone(), AckLevel::Durable).await.expect("append");
                    let _ = histogram.borrow_mut().record(sent.elapsed().as_micros() as u64);
                    bytes += batch.len() as u64;
                }
                bytes
            })
        })
        .collect();
    let mut total = 0u64;
    for task in tasks {
        total += task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = log.stats();
    log.close().await.expect("close");
    let h = histogram.borrow();
    println!(
        "{:>7} KiB {:>10} {:>10.0} {:>9.0} {:>12.0} {:>9} {:>9} {:>9} {:>9}",
        batch_bytes >> 10,
        format!("{sync:?}").to_lowercase(),
        total as f64 / elapsed / 1e6,
        stats.writes as f64 / elapsed,
        stats.written_bytes as f64 / stats.writes.max(1) as f64 / 1024.0,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    let _ = std::fs::remove_dir_all(dir);
}
