//! Segment recovery on arbitrary "disk" bytes, through the simulated disk:
//! opening must give a log or an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ringbroker::storage::sim::SimStorage;
use ringbroker::storage::{LogConfig, OpenOptions, PartitionLog};

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    let executor = glommio_executor();
    executor.run(async move {
        let storage = SimStorage::new();
        let dir = Path::new("/fuzz/p-0");
        storage.set_contents(&dir.join("00000000000000000000.log"), data);
        let config = LogConfig {
            segment_bytes_max: 1 << 20,
            write_bytes_max: 64 << 10,
            batch_bytes_max: 32 << 10,
            ..LogConfig::default()
        };
        if let Ok(log) = PartitionLog::open(storage, dir, config, OpenOptions::default()).await {
            let _ = log.close().await;
        }
    });
});

fn glommio_executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(32)
        .make()
        .expect("a small executor")
}
