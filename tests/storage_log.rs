//! The partition log against real O_DIRECT files on the real disk, through
//! glommio: append, read, durability, roll, indexes, retention, reopen,
//! recovery from torn tails and refusal of corruption.

mod support;

use std::path::Path;

use ringbroker::protocol::batch::BatchView;
use ringbroker::protocol::types::{AckLevel, Offset, TimestampMs};
use ringbroker::storage::dma::DmaStorage;
use ringbroker::storage::io::SyncMethod;
use ringbroker::storage::{FlushPolicy, LogConfig, OpenOptions, PartitionLog, RecoveryMode, StorageError};
use support::{batch, batch_at, numbered_batch, run, temp_dir};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        segment_age_max_ms: None,
        index_interval_bytes: 1024,
        write_bytes_max: 16 << 10,
        // Small requests, so flushes are split into several concurrent writes.
        write_request_bytes: 4096,
        batch_bytes_max: 8 << 10,
        tail_cache_bytes: 4 << 10,
        flush: FlushPolicy::EveryBatch,
        retention_bytes: None,
        retention_ms: None,
        preallocate: true,
        ..LogConfig::default()
    }
}

fn offset(value: u64) -> Offset {
    Offset::new(value).unwrap()
}

async fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog<DmaStorage>, StorageError> {
    let storage = DmaStorage::new(dir).await.unwrap();
    PartitionLog::open(storage, &dir.join("orders-0"), config, OpenOptions::default()).await
}

/// Reads the whole visible log from `from`, returning (base offset, record values) per batch.
async fn read_all(log: &PartitionLog<DmaStorage>, from: Offset) -> Vec<(u64, Vec<Vec<u8>>)> {
    let mut batches = Vec::new();
    let mut next = from;
    loop {
        let mut out = Vec::new();
        let outcome = log.read(next, 10_000, &mut out).await.unwrap();
        if outcome.bytes == 0 {
            assert_eq!(next, outcome.visible_end, "an empty read happens only at the end");
            return batches;
        }
        let mut rest = &out[..];
        while !rest.is_empty() {
            let view = BatchView::parse(rest, 1 << 20).expect("stored batches stay valid");
            let values = view.records().unwrap().map(|r| r.unwrap().value.unwrap().to_vec()).collect();
            batches.push((view.base_offset() as u64, values));
            rest = &rest[view.total_len()..];
        }
        next = outcome.next_offset;
    }
}

fn expected_values(tag: u64, count: usize, value_len: usize) -> Vec<Vec<u8>> {
    let batch = numbered_batch(tag, count, value_len);
    let view = BatchView::parse(&batch, 1 << 20).unwrap();
    view.records().unwrap().map(|r| r.unwrap().value.unwrap().to_vec()).collect()
}

#[test]
fn appends_get_consecutive_offsets_and_read_back_from_cache_and_disk() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        for tag in 0..50u64 {
            let receipt = log.append_and_wait(numbered_batch(tag, 3, 100), AckLevel::Durable).await.unwrap();
            assert_eq!(receipt.base, offset(tag * 3));
            assert_eq!(receipt.next, offset(tag * 3 + 3));
        }
        assert_eq!(log.bounds(), (offset(150), offset(0)));
        // The tail cache (4 KiB) holds only the newest batches; offset 0 comes from disk.
        let all = read_all(&log, offset(0)).await;
        assert_eq!(all.len(), 50);
        for (tag, (base, values)) in all.iter().enumerate() {
            assert_eq!(*base, tag as u64 * 3);
            assert_eq!(values, &expected_values(tag as u64, 3, 100));
        }
        // A read from the middle of a batch starts with the batch containing it.
        let from_middle = read_all(&log, offset(64)).await;
        assert_eq!(from_middle[0].0, 63);
        let stats = log.stats();
        assert!(stats.disk_reads > 0 && stats.cache_reads > 0, "{stats:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn a_reopened_log_holds_everything_and_continues_the_offsets() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        for tag in 0..40u64 {
            log.append_and_wait(numbered_batch(tag, 5, 700), AckLevel::Durable).await.unwrap();
        }
        let segments_before = log.segment_count();
        assert!(segments_before > 2, "the small segment size forces rolls");
        log.close().await.unwrap();

        let log = open(&path, small_config()).await.unwrap();
        assert_eq!(log.segment_count(), segments_before);
        assert_eq!(log.bounds(), (offset(200), offset(0)));
        let receipt = log.append_and_wait(numbered_batch(40, 5, 700), AckLevel::Durable).await.unwrap();
        assert_eq!(receipt.base, offset(200));
        let all = read_all(&log, offset(0)).await;
        assert_eq!(all.len(), 41);
        for (tag, (base, values)) in all.iter().enumerate() {
            assert_eq!(*base, tag as u64 * 5);
            assert_eq!(values, &expected_values(tag as u64, 5, 700));
        }
        log.close().await.unwrap();
    });
}

#[test]
fn a_log_dropped_without_close_recovers_every_durable_append() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        for tag in 0..30u64 {
            log.append_and_wait(numbered_batch(tag, 2, 300), AckLevel::Durable).await.unwrap();
        }
        // No close: as after a crash of the process, with the page cache intact.
        drop(log);
        let log = open(&path, small_config()).await.unwrap();
        assert_eq!(log.bounds().0, offset(60));
        assert_eq!(read_all(&log, offset(0)).await.len(), 30);
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_by_size_and_sealed_indexes_are_rebuilt_when_missing_or_damaged() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        for tag in 0..60u64 {
            log.append_and_wait(numbered_batch(tag, 4, 700), AckLevel::Durable).await.unwrap();
        }
        let segments = log.segment_count();
        assert!(segments >= 3);
        assert_eq!(log.stats().segments_rolled as usize, segments - 1);
        log.close().await.unwrap();

        let partition = path.join("orders-0");
        let mut indexes: Vec<_> = std::fs::read_dir(&partition)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "index"))
            .collect();
        indexes.sort();
        assert_eq!(indexes.len(), segments - 1, "every sealed segment has an index file");
        // Sealed segments are trimmed to their data; no segment exceeds the limit.
        for entry in std::fs::read_dir(&partition).unwrap() {
            let entry = entry.unwrap();
            if entry.path().extension().is_some_and(|ext| ext == "log") {
                assert!(entry.metadata().unwrap().len() <= 64 << 10);
            }
        }
        std::fs::remove_file(&indexes[0]).unwrap();
        let mut damaged = std::fs::read(&indexes[1]).unwrap();
        damaged[20] ^= 0xFF;
        std::fs::write(&indexes[1], damaged).unwrap();

        let log = open(&path, small_config()).await.unwrap();
        let all = read_all(&log, offset(0)).await;
        assert_eq!(all.len(), 60);
        for (tag, (base, values)) in all.iter().enumerate() {
            assert_eq!(*base, tag as u64 * 4);
            assert_eq!(values, &expected_values(tag as u64, 4, 700));
        }
        log.close().await.unwrap();
        assert!(indexes[0].exists(), "the missing index was written again");
    });
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// 100 batches of one 2000-byte record: the first 50 stamped at time 1000,
/// the rest ten days later.
async fn fill_old_then_recent(log: &PartitionLog<DmaStorage>) {
    for tag in 0..100u64 {
        let ts = if tag < 50 { 1_000 } else { 10 * DAY_MS };
        log.append_and_wait(batch_at(&[&[b'x'; 2000]], ts), AckLevel::Durable).await.unwrap();
    }
}

#[test]
fn retention_by_size_deletes_whole_old_segments() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig { retention_bytes: Some(100 << 10), ..small_config() };
        let log = open(&path, config).await.unwrap();
        fill_old_then_recent(&log).await;
        assert!(log.size_bytes() > 150 << 10);
        let deleted = log.enforce_retention(TimestampMs(10 * DAY_MS)).await.unwrap();
        assert!(deleted > 0);
        assert!(log.size_bytes() >= 100 << 10, "size retention keeps at least the limit");
        assert!(log.size_bytes() < (100 << 10) + (64 << 10), "and at most one segment more");
        let (end, start) = log.bounds();
        assert_eq!(end, offset(100));
        assert!(start > offset(0));
        let mut out = Vec::new();
        let error = log.read(offset(0), 1000, &mut out).await.unwrap_err();
        assert!(matches!(error, StorageError::OffsetOutOfRange { .. }), "{error}");
        assert_eq!(read_all(&log, start).await.len() as u64, 100 - start.get());
        log.close().await.unwrap();
        // The deletion is durable: a reopened log starts at the same offset.
        let log = open(&path, small_config()).await.unwrap();
        assert_eq!(log.bounds(), (end, start));
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_age_deletes_segments_whose_newest_record_is_too_old() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig { retention_ms: Some(DAY_MS as u64), ..small_config() };
        let log = open(&path, config).await.unwrap();
        fill_old_then_recent(&log).await;
        assert!(log.enforce_retention(TimestampMs(10 * DAY_MS)).await.unwrap() > 0);
        let (_, start) = log.bounds();
        assert!(start > offset(0) && start <= offset(50), "start {start}");
        // The oldest kept segment straddles old and recent records.
        let mut out = Vec::new();
        log.read(start, 100, &mut out).await.unwrap();
        assert_eq!(BatchView::parse(&out, 1 << 20).unwrap().max_timestamp(), 1_000);
        log.close().await.unwrap();
    });
}

#[test]
fn deleting_records_moves_the_log_start_durably_and_removes_whole_segments_below_it() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        // 100 one-record batches of 2000 bytes: about 32 per 64 KiB segment.
        fill_old_then_recent(&log).await;
        let segments = log.segment_count();
        assert!(segments >= 3, "{segments} segments");
        let mut out = Vec::new();
        let beyond = log.delete_records_before(offset(101)).await.unwrap_err();
        assert!(matches!(beyond, StorageError::OffsetOutOfRange { .. }), "past the end is refused: {beyond}");
        assert_eq!(log.delete_records_before(offset(70)).await.unwrap(), offset(70));
        assert!(log.segment_count() < segments, "segments wholly below 70 are gone");
        assert_eq!(log.bounds(), (offset(100), offset(70)));
        let below = log.read(offset(69), 1000, &mut out).await.unwrap_err();
        assert!(matches!(below, StorageError::OffsetOutOfRange { .. }), "{below}");
        assert_eq!(read_all(&log, offset(70)).await.len(), 30);
        // Moving it back is not possible; asking for less changes nothing.
        assert_eq!(log.delete_records_before(offset(10)).await.unwrap(), offset(70));
        assert_eq!(log.offset_for_time(TimestampMs(0)).await.unwrap(), Some(offset(70)));
        log.close().await.unwrap();
        // The start survives a restart, though the oldest segment begins below it.
        let log = open(&path, small_config()).await.unwrap();
        assert_eq!(log.bounds(), (offset(100), offset(70)));
        // Everything may go: the log is then empty and goes on at its end.
        assert_eq!(log.delete_records_before(offset(100)).await.unwrap(), offset(100));
        assert_eq!(log.segment_count(), 1);
        let receipt = log.append_and_wait(batch(&[b"after"]), AckLevel::Durable).await.unwrap();
        assert_eq!(receipt.base, offset(100));
        assert_eq!(read_all(&log, offset(100)).await, vec![(100, vec![b"after".to_vec()])]);
        log.close().await.unwrap();
        let log = open(&path, small_config()).await.unwrap();
        assert_eq!(log.bounds(), (offset(101), offset(100)));
        log.close().await.unwrap();
    });
}

#[test]
fn changed_limits_apply_to_a_running_log() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        let limits = log.limits();
        // Segments of 16 KiB instead of 64: 2000-byte batches now roll every eight.
        log.set_limits(ringbroker::storage::LogLimits { segment_bytes_max: 16 << 10, ..limits });
        for _ in 0..40 {
            log.append_and_wait(batch(&[&[b'y'; 2000]]), AckLevel::Durable).await.unwrap();
        }
        assert!(log.segment_count() >= 5, "{} segments", log.segment_count());
        assert_eq!(log.enforce_retention(TimestampMs::now()).await.unwrap(), 0, "no retention limit yet");
        log.set_limits(ringbroker::storage::LogLimits { retention_bytes: Some(20 << 10), ..log.limits() });
        assert!(log.enforce_retention(TimestampMs::now()).await.unwrap() > 0);
        assert!(log.size_bytes() < 40 << 10, "{} bytes left", log.size_bytes());
        log.close().await.unwrap();
    });
}

#[test]
fn offsets_can_be_found_by_time() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        for tag in 0..100i64 {
            log.append_and_wait(batch_at(&[&[b'v'; 500]], 1000 + tag * 10), AckLevel::Durable).await.unwrap();
        }
        assert_eq!(log.offset_for_time(TimestampMs(0)).await.unwrap(), Some(offset(0)));
        assert_eq!(log.offset_for_time(TimestampMs(1500)).await.unwrap(), Some(offset(50)));
        assert_eq!(log.offset_for_time(TimestampMs(1505)).await.unwrap(), Some(offset(51)));
        assert_eq!(log.offset_for_time(TimestampMs(99_999)).await.unwrap(), None);
        log.close().await.unwrap();
    });
}

#[test]
fn readers_see_nothing_before_it_is_durable_and_long_polls_wake_up() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig { flush: FlushPolicy::Interval { interval_ms: 60_000 }, ..small_config() };
        let log = open(&path, config).await.unwrap();
        let receipt = log.append(batch(&[b"one"])).await.unwrap();
        log.wait(receipt, AckLevel::Written).await.unwrap();
        // Written but not synced (the interval is a minute): invisible.
        let mut out = Vec::new();
        let outcome = log.read(offset(0), 1000, &mut out).await.unwrap();
        assert_eq!((outcome.bytes, outcome.visible_end), (0, offset(0)));
        // A long-polling reader parks until the data becomes durable.
        let parked = glommio::spawn_local({
            let log = log.clone();
            async move { log.wait_visible_past(offset(0)).await }
        });
        log.wait(receipt, AckLevel::Durable).await.unwrap();
        parked.await;
        let outcome = log.read(offset(0), 1000, &mut out).await.unwrap();
        assert_eq!((outcome.next_offset, outcome.visible_end), (offset(1), offset(1)));
        log.close().await.unwrap();
    });
}

/// Both ways of making a write durable, with names for messages and dirs.
const SYNC_METHODS: [(SyncMethod, &str); 2] = [(SyncMethod::Dsync, "dsync"), (SyncMethod::Fdatasync, "fdatasync")];

/// The open flags (`/proc/self/fdinfo`) of every descriptor this process
/// holds on `path`.
fn open_flags(path: &Path) -> Vec<i32> {
    let target = path.canonicalize().unwrap();
    let mut flags = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(target.as_path()) {
            continue;
        }
        let info = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(entry.file_name())).unwrap();
        let octal = info.lines().find_map(|line| line.strip_prefix("flags:")).unwrap().trim();
        flags.push(i32::from_str_radix(octal, 8).unwrap());
    }
    flags
}

#[test]
fn segments_are_opened_with_o_dsync_exactly_when_the_sync_method_says_so() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    run(move || async move {
        for (sync, name) in SYNC_METHODS {
            let (config, dir) = (LogConfig { sync, ..small_config() }, root.join(name));
            // Created by the log, then opened by recovery.
            for (tag, stage) in [(0, "created"), (1, "recovered")] {
                let log = open(&dir, config.clone()).await.unwrap();
                log.append_and_wait(numbered_batch(tag, 1, 100), AckLevel::Durable).await.unwrap();
                let flags = open_flags(&dir.join("orders-0").join(format!("{:020}.log", 0)));
                assert!(!flags.is_empty(), "{name}, {stage}: the segment is open");
                for flag in flags {
                    assert_ne!(flag & libc::O_DIRECT, 0, "{name}, {stage}: {flag:o}");
                    assert_eq!(flag & libc::O_DSYNC != 0, sync == SyncMethod::Dsync, "{name}, {stage}: {flag:o}");
                }
                log.close().await.unwrap();
            }
            let reopened = open(&dir, config).await.unwrap();
            assert_eq!(reopened.bounds(), (offset(2), offset(0)), "{name}");
            reopened.close().await.unwrap();
        }
    });
}

#[test]
fn concurrent_appends_are_group_committed() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    run(move || async move {
        for (sync, name) in SYNC_METHODS {
            let log = open(&root.join(name), LogConfig { sync, ..small_config() }).await.unwrap();
            let tasks: Vec<_> = (0..200u64)
                .map(|tag| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        log.append_and_wait(numbered_batch(tag, 1, 50), AckLevel::Durable).await.unwrap()
                    })
                })
                .collect();
            let mut receipts = Vec::new();
            for task in tasks {
                receipts.push(task.await);
            }
            receipts.sort_by_key(|r| r.base);
            for (i, receipt) in receipts.iter().enumerate() {
                assert_eq!(receipt.base, offset(i as u64));
            }
            let stats = log.stats();
            assert_eq!(stats.appended_batches, 200);
            assert!(stats.writes < 200, "{name}: group commit shares flushes: {stats:?}");
            // One fdatasync per flush, or none: O_DSYNC writes need none.
            let fsyncs = if sync == SyncMethod::Dsync { 0 } else { stats.writes };
            assert_eq!(stats.fsyncs, fsyncs, "{name}: {stats:?}");
            log.close().await.unwrap();
        }
    });
}

#[test]
fn invalid_and_oversized_batches_are_rejected_without_side_effects() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        let mut bad = batch(&[b"payload"]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(log.append(bad).await, Err(StorageError::InvalidBatch(_))));
        let huge = batch(&[&vec![0u8; 10_000]]);
        assert!(matches!(log.append(huge).await, Err(StorageError::BatchTooLarge { .. })));
        assert_eq!(log.next_offset(), offset(0));
        let receipt = log.append_and_wait(batch(&[b"ok"]), AckLevel::Durable).await.unwrap();
        assert_eq!(receipt.base, offset(0));
        log.close().await.unwrap();
    });
}

/// Writes a log of `batches` batches, closes it, and returns the active
/// segment's path and the file positions where each batch ends.
async fn write_fixture(path: &Path, batches: u64) -> (std::path::PathBuf, Vec<u64>) {
    let log = open(path, small_config()).await.unwrap();
    let mut ends = Vec::new();
    let mut end = 0u64;
    for tag in 0..batches {
        let b = numbered_batch(tag, 2, 150);
        end += b.len() as u64;
        ends.push(end);
        log.append_and_wait(b, AckLevel::Durable).await.unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    log.close().await.unwrap();
    (path.join("orders-0").join("00000000000000000000.log"), ends)
}

#[test]
fn a_torn_tail_is_trimmed_to_the_last_whole_batch_on_real_files() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, ends) = write_fixture(&path, 20).await;
        let pristine = std::fs::read(&segment).unwrap();
        let last_end = *ends.last().unwrap();
        // Cut positions across the last three batches (every 7th byte on
        // real files; the simulated-disk test covers every byte).
        let first_cut = ends[ends.len() - 4];
        for cut in (first_cut..last_end).step_by(7) {
            for fill in [0u8, 0xA5] {
                let mut torn = pristine[..cut as usize].to_vec();
                torn.resize(pristine.len(), 0);
                // Garbage after the cut, as a partial write might leave.
                for byte in &mut torn[cut as usize..(cut as usize + 300).min(pristine.len())] {
                    *byte = fill;
                }
                std::fs::write(&segment, &torn).unwrap();
                let log = open(&path, small_config()).await.unwrap();
                // Batches that survive byte for byte (cutting a trailing zero
                // byte and refilling it with zero changes nothing).
                let whole =
                    ends.iter().take_while(|end| torn[..**end as usize] == pristine[..**end as usize]).count() as u64;
                assert_eq!(log.bounds().0, offset(whole * 2), "cut at {cut}, fill {fill:#x}");
                let receipt = log.append_and_wait(numbered_batch(99, 2, 150), AckLevel::Durable).await.unwrap();
                assert_eq!(receipt.base, offset(whole * 2));
                let all = read_all(&log, offset(0)).await;
                assert_eq!(all.len() as u64, whole + 1);
                log.close().await.unwrap();
            }
        }
    });
}

#[test]
fn corruption_before_the_tail_refuses_the_partition_unless_the_operator_truncates() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 150 batches of ~385 bytes fill one segment with ~56 KiB, far more
        // than the two 16 KiB write windows recovery would treat as a tail.
        let log = open(&path, small_config()).await.unwrap();
        for tag in 0..150u64 {
            log.append_and_wait(numbered_batch(tag, 2, 150), AckLevel::Durable).await.unwrap();
        }
        assert_eq!(log.segment_count(), 1);
        log.close().await.unwrap();
        let segment = path.join("orders-0").join("00000000000000000000.log");
        let mut bytes = std::fs::read(&segment).unwrap();
        let flip_at = 5_000;
        bytes[flip_at] ^= 0x40;
        std::fs::write(&segment, &bytes).unwrap();

        let error = open(&path, small_config()).await.unwrap_err();
        let StorageError::Corrupt { path: bad_path, pos, offset: bad_offset, .. } = &error else {
            panic!("expected corruption, got {error}");
        };
        assert_eq!(bad_path, &segment);
        assert!(pos.0 <= flip_at as u64 && flip_at as u64 - pos.0 < 400, "{error}");
        assert!(bad_offset.get() > 0, "{error}");
        let message = error.to_string();
        assert!(message.contains("00000000000000000000.log") && message.contains("offset"), "{message}");

        // The operator override cuts the log at the corrupt batch.
        let storage = DmaStorage::new(&path).await.unwrap();
        let options = OpenOptions { recovery: RecoveryMode::TruncateCorruption, ..OpenOptions::default() };
        let log = PartitionLog::open(storage, &path.join("orders-0"), small_config(), options).await.unwrap();
        assert_eq!(log.bounds().0, *bad_offset);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(read_all(&log, offset(0)).await.len() as u64 * 2, bad_offset.get());
        log.close().await.unwrap();
    });
}

#[test]
fn a_second_process_cannot_lock_the_data_directory() {
    let dir = temp_dir();
    let _lock = ringbroker::storage::DirLock::acquire(dir.path()).unwrap();
    let again = ringbroker::storage::DirLock::acquire(dir.path());
    assert!(matches!(again, Err(StorageError::Locked { .. })));
}

/// A batch of idempotent producer `producer` (epoch `epoch`) starting at
/// sequence `seq`, with `count` records.
fn idempotent_batch(producer: i64, epoch: i16, seq: i32, count: usize) -> bytes::BytesMut {
    use ringbroker::protocol::batch::{BatchBuilder, BatchOptions, Record};
    let mut out = Vec::new();
    let options =
        BatchOptions { producer_id: producer, producer_epoch: epoch, base_sequence: seq, ..BatchOptions::default() };
    let mut builder = BatchBuilder::with_options(&mut out, 1_764_000_000_000, options);
    for index in 0..count {
        let value = format!("p{producer}-s{}", seq as usize + index);
        builder.push(&Record {
            timestamp_ms: 1_764_000_000_000,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
        });
    }
    bytes::BytesMut::from(builder.finish())
}

/// An idempotent producer's retry is answered with the original offsets and
/// stored once, before and after the log is reopened (the producers are
/// rebuilt from the active segment's batches); a gap and an older epoch
/// are refused.
#[test]
fn an_idempotent_producers_retries_are_stored_once_across_a_restart() {
    use ringbroker::storage::producers::SequenceError;
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig::default();
        let log = open(&path, config.clone()).await.unwrap();
        let first = log.append_and_wait(idempotent_batch(7, 0, 0, 3), AckLevel::Durable).await.unwrap();
        let second = log.append_and_wait(idempotent_batch(7, 0, 3, 2), AckLevel::Durable).await.unwrap();
        assert_eq!((first.base, second.base), (offset(0), offset(3)));
        let retried = log.append_and_wait(idempotent_batch(7, 0, 0, 3), AckLevel::Durable).await.unwrap();
        assert_eq!(retried, first, "the retry gets the original offsets");
        // Batches of no producer are not checked; another producer is independent.
        log.append_and_wait(batch(&[b"plain"]), AckLevel::Durable).await.unwrap();
        log.append_and_wait(idempotent_batch(8, 0, 0, 1), AckLevel::Durable).await.unwrap();
        match log.append(idempotent_batch(7, 0, 9, 1)).await {
            Err(StorageError::Sequence(SequenceError::OutOfOrder { expected: 5, got: 9, .. })) => {}
            other => panic!("a gap: {other:?}"),
        }
        assert_eq!(log.bounds().0, offset(7));
        drop(log);

        // As after a crash: the producers come back from the log itself.
        let log = open(&path, config).await.unwrap();
        let retried = log.append_and_wait(idempotent_batch(7, 0, 3, 2), AckLevel::Durable).await.unwrap();
        assert_eq!(retried, second, "recognised after the restart");
        let next = log.append_and_wait(idempotent_batch(7, 0, 5, 1), AckLevel::Durable).await.unwrap();
        assert_eq!(next.base, offset(7));
        log.append_and_wait(idempotent_batch(7, 1, 0, 1), AckLevel::Durable).await.unwrap();
        match log.append(idempotent_batch(7, 0, 6, 1)).await {
            Err(StorageError::Sequence(SequenceError::Fenced { current: 1, got: 0, .. })) => {}
            other => panic!("an older epoch: {other:?}"),
        }
        assert_eq!(log.bounds().0, offset(9));
        assert_eq!(read_all(&log, offset(0)).await.len(), 6, "six batches, each once");
        log.close().await.unwrap();
    });
}

/// A producer whose batches lie only in sealed segments is still known
/// after a restart: each roll writes the producers' state as of the new
/// segment's start, and recovery starts from the newest such snapshot.
#[test]
fn idempotent_producers_in_sealed_segments_survive_a_restart() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = open(&path, small_config()).await.unwrap();
        let first = log.append_and_wait(idempotent_batch(11, 0, 0, 4), AckLevel::Durable).await.unwrap();
        let second = log.append_and_wait(idempotent_batch(11, 0, 4, 4), AckLevel::Durable).await.unwrap();
        // Other data rolls the log past the producer's segment several times.
        for tag in 0..60u64 {
            log.append_and_wait(numbered_batch(tag, 5, 700), AckLevel::Durable).await.unwrap();
        }
        assert!(log.segment_count() > 3);
        let end = log.bounds().0;
        log.close().await.unwrap();
        // The snapshot of the last roll is written in the background.
        let snapshots = || {
            std::fs::read_dir(path.join("orders-0"))
                .unwrap()
                .filter(|entry| entry.as_ref().unwrap().path().extension().is_some_and(|ext| ext == "producers"))
                .count()
        };
        for _ in 0..100 {
            if snapshots() == 2 {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(snapshots(), 2, "the newest two snapshots are kept");

        let log = open(&path, small_config()).await.unwrap();
        assert_eq!(log.append_and_wait(idempotent_batch(11, 0, 4, 4), AckLevel::Durable).await.unwrap(), second);
        assert_eq!(log.append_and_wait(idempotent_batch(11, 0, 0, 4), AckLevel::Durable).await.unwrap(), first);
        assert_eq!(log.bounds().0, end, "nothing stored twice");
        let next = log.append_and_wait(idempotent_batch(11, 0, 8, 1), AckLevel::Durable).await.unwrap();
        assert_eq!(next.base, end);
        log.close().await.unwrap();
    });
}
