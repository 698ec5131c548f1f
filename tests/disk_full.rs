//! A full disk, for real: the broker runs on a small loop-mounted ext4
//! image. Producing until the disk is full must fail with a clear,
//! retriable error and acknowledge nothing partial; once space is freed,
//! producing resumes without a restart and everything acknowledged reads
//! back. Needs root (mount); without it the test says so and does nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ringbroker::client::{Client, ClientOptions, PartitionConsumer, StartPosition};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::ErrorCode;
use support::broker::BrokerProcess;
use support::{numbered_batch, run, temp_dir};

/// A loop-mounted ext4 file system, unmounted when dropped.
struct SmallDisk {
    mount_point: PathBuf,
}

impl SmallDisk {
    fn create(dir: &Path, size_mb: u32) -> Option<SmallDisk> {
        let image = dir.join("disk.img");
        let mount_point = dir.join("mnt");
        std::fs::create_dir_all(&mount_point).ok()?;
        let ok = |command: &mut Command| command.status().is_ok_and(|status| status.success());
        let made = ok(Command::new("truncate").arg("-s").arg(format!("{size_mb}M")).arg(&image))
            && ok(Command::new("mkfs.ext4").args(["-q", "-m", "0"]).arg(&image))
            && ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount_point));
        made.then_some(SmallDisk { mount_point })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let output = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().expect("df");
    String::from_utf8_lossy(&output.stdout).lines().nth(1).and_then(|line| line.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_full_disk_fails_produce_cleanly_and_producing_resumes_when_space_frees_up() {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0"));
    if !is_root {
        println!("skipped: mounting a small ext4 image needs root");
        return;
    }
    let dir = temp_dir();
    let Some(disk) = SmallDisk::create(dir.path(), 96) else {
        println!("skipped: could not create and loop-mount an ext4 image (mkfs.ext4, mount -o loop)");
        return;
    };
    let data = disk.mount_point.join("data");
    // Small preallocated segments: a full disk shows when a segment rolls.
    let tuning = dir.path().join("small.toml");
    std::fs::write(
        &tuning,
        "[storage]\nsegment_bytes = 4194304\nwrite_bytes_max = 2097152\nbatch_bytes_max = 1048576\nfree_bytes_reserved = 1048576\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    // Leave room for a few segments only.
    let ballast = disk.mount_point.join("ballast");
    let keep_free = 20u64 << 20;
    let ballast_bytes = free_bytes(&disk.mount_point).saturating_sub(keep_free);
    assert!(Command::new("fallocate")
        .arg("-l")
        .arg(ballast_bytes.to_string())
        .arg(&ballast)
        .status()
        .unwrap()
        .success());

    let addr = broker.addr;
    let ballast_for_task = ballast.clone();
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("full", 1).await.unwrap();
        let mut acked = 0u64;
        let mut full = None;
        for tag in 0..10_000u64 {
            let batch = numbered_batch(tag, 16, 1000);
            match client.produce_raw("full", PartitionId(0), &batch, AckLevel::Durable).await {
                Ok(result) => {
                    assert_eq!(result.base_offset, Offset::new(acked).unwrap(), "acks stay contiguous");
                    acked += 16;
                }
                Err(error) => {
                    full = error.code();
                    break;
                }
            }
        }
        assert_eq!(full, Some(ErrorCode::STORAGE_FULL), "the disk filled up with a clear error");
        assert!(ErrorCode::STORAGE_FULL.is_retriable());
        let end =
            client.list_offsets("full", PartitionId(0), ringbroker::protocol::wire::OffsetSpec::Latest).await.unwrap();
        assert_eq!(end, Offset::new(acked), "nothing partial is visible");

        // Space frees up: the same broker takes writes again.
        std::fs::remove_file(&ballast_for_task).unwrap();
        let batch = numbered_batch(99_999, 16, 1000);
        let resumed = client.produce_raw("full", PartitionId(0), &batch, AckLevel::Durable).await;
        let resumed = resumed.expect("producing resumes once space is free, without a restart");
        assert_eq!(resumed.base_offset, Offset::new(acked).unwrap());
        let mut consumer = PartitionConsumer::new(client.clone(), "full", PartitionId(0), StartPosition::Earliest);
        let mut read = 0u64;
        while read < acked + 16 {
            let records = consumer.poll(Duration::from_millis(200)).await.unwrap();
            assert!(!records.is_empty(), "all {} acknowledged events read back, got {read}", acked + 16);
            for record in records {
                assert_eq!(record.offset, Offset::new(read).unwrap());
                read += 1;
            }
        }
    });
    assert!(broker.terminate().success());
    drop(disk);
}
