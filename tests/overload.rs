//! Overload: producers far faster than the disk (acks none, nothing waits)
//! and a consumer slower than the producers, for a sustained period. The
//! broker must push back (stop reading sockets) instead of buffering: its
//! peak resident memory stays within the configured budgets, and data
//! acknowledged afterwards is all readable.

mod support;

use std::time::{Duration, Instant};

use ringbroker::client::{Client, ClientOptions, PartitionConsumer, StartPosition};
use ringbroker::protocol::types::{AckLevel, PartitionId};
use support::broker::BrokerProcess;
use support::{numbered_batch, run, temp_dir};

const OVERLOAD: Duration = Duration::from_secs(4);
const PARTITIONS: u32 = 4;
const MIB: u64 = 1 << 20;

fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("a /proc status field");
    kib * 1024
}

#[test]
fn overload_is_pushed_back_and_memory_stays_within_budget() {
    let dir = temp_dir();
    let tuning = dir.path().join("overload.toml");
    // Budgets the peak must respect: 32 MiB of requests per shard, 2 MiB
    // pending and 4 MiB of tail cache per partition.
    std::fs::write(
        &tuning,
        "[network]\ninflight_bytes_per_shard = 33554432\ninflight_bytes_per_connection = 8388608\n\
         [storage]\nwrite_bytes_max = 2097152\nbatch_bytes_max = 1048576\ntail_cache_bytes = 4194304\n\
         segment_bytes = 67108864\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let (addr, pid) = (broker.addr, broker.pid());
    let baseline = status_bytes(pid, "VmRSS:");
    let produced = run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("flood", PARTITIONS).await.unwrap();
        let deadline = Instant::now() + OVERLOAD;
        let mut producers = Vec::new();
        for p in 0..PARTITIONS {
            let client = client.clone();
            producers.push(glommio::spawn_local(async move {
                let batch = numbered_batch(u64::from(p), 60, 1000);
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    client.produce_raw("flood", PartitionId(p), &batch, AckLevel::None).await.unwrap();
                    sent += 1;
                }
                sent
            }));
        }
        // A consumer slower than the producers: small fetches with pauses.
        let slow = glommio::spawn_local({
            let client = client.clone();
            async move {
                let mut consumer = PartitionConsumer::new(client, "flood", PartitionId(0), StartPosition::Earliest)
                    .with_max_bytes(64 << 10);
                while Instant::now() < deadline {
                    let _ = consumer.poll(Duration::from_millis(50)).await.unwrap();
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let mut sent = 0;
        for producer in producers {
            sent += producer.await;
        }
        slow.await;
        // After the storm: a durable produce is acknowledged and readable.
        let last =
            client.produce_raw("flood", PartitionId(1), &numbered_batch(999, 3, 10), AckLevel::Durable).await.unwrap();
        let mut consumer =
            PartitionConsumer::new(client.clone(), "flood", PartitionId(1), StartPosition::Offset(last.base_offset));
        let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(records.len(), 3);
        sent
    });
    let peak = status_bytes(pid, "VmHWM:");
    // Request budget (2 shards) + per-partition pending and tail cache, plus
    // slack for what the budgets do not count: flush buffers, fetch
    // responses, the allocator keeping freed memory (VmHWM is a high-water
    // mark). Measured growth here: 63-116 MiB for ~2 GB offered.
    let budget = 2 * 32 * MIB + u64::from(PARTITIONS) * (2 + 4) * MIB + 96 * MIB;
    println!(
        "overload {OVERLOAD:?}: {produced} batches of ~60 KiB offered (acks none); broker VmHWM {} MiB, baseline {} MiB, \
         growth {} MiB, budget {} MiB",
        peak / MIB,
        baseline / MIB,
        peak.saturating_sub(baseline) / MIB,
        budget / MIB
    );
    assert!(peak.saturating_sub(baseline) < budget, "peak memory {peak} over baseline {baseline} exceeds {budget}");
    assert!(broker.terminate().success());
}
