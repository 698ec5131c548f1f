//! Topic configs and record deletion through the native protocol and the
//! CLI, against the real binary: configs change a running topic (segment
//! size, retention, timestamps), bad ones are refused with a clear error,
//! and configs and a moved log start survive a restart.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use ringbroker::client::{decode_records, Client, ClientOptions};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId, TimestampMs};
use ringbroker::protocol::wire::ErrorCode;
use support::broker::BrokerProcess;
use support::{batch_at, cli, run, temp_dir};

/// Runs the CLI expecting a failure; returns what it printed on stderr.
fn cli_fails(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", &addr.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ringbroker");
    assert!(!output.status.success(), "{args:?} should fail: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// (earliest, latest) of partition 0 as `topic describe` prints them.
fn bounds(addr: std::net::SocketAddr, topic: &str) -> (u64, u64) {
    let text = cli(addr, &["topic", "describe", topic], "");
    let row = text.lines().find(|line| line.starts_with("0\t")).expect("partition 0's row");
    let fields: Vec<&str> = row.split('\t').collect();
    (fields[2].parse().expect("earliest"), fields[3].parse().expect("latest"))
}

/// A config's (value, source) as `topic describe` prints it.
fn config(addr: std::net::SocketAddr, topic: &str, name: &str) -> (String, String) {
    let text = cli(addr, &["topic", "describe", topic], "");
    let row = text.lines().find(|line| line.starts_with(&format!("{name}\t"))).expect("the config's row");
    let fields: Vec<&str> = row.split('\t').collect();
    (fields[1].to_string(), fields[2].to_string())
}

fn segment_files(data: &Path, topic: &str) -> usize {
    let dir = data.join("topics").join(format!("{topic}-0"));
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().path().extension() == Some("log".as_ref()))
        .count()
}

#[test]
fn configs_change_a_running_topic_and_survive_a_restart_with_the_moved_log_start() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let tuning = dir.path().join("fast-retention.toml");
    std::fs::write(&tuning, "[storage]\nretention_check_interval_ms = 100\n").unwrap();
    let args = ["--tuning", tuning.to_str().unwrap()];
    let broker = BrokerProcess::start(&data, &args);
    let addr = broker.addr;
    cli(addr, &["topic", "create", "shrinking", "--partitions", "1"], "");
    assert_eq!(config(addr, "shrinking", "segment.bytes"), ("268435456".into(), "broker".into()));

    // Segments of 1 MiB, then 4 MB of events: at least three segment files.
    let altered = cli(addr, &["topic", "alter", "shrinking", "--set", "segment.bytes=1048576"], "");
    assert!(altered.contains("altered topic shrinking"), "{altered}");
    assert_eq!(config(addr, "shrinking", "segment.bytes"), ("1048576".into(), "topic".into()));
    let line = "e".repeat(999);
    let input: String = (0..4000).map(|_| format!("{line}\n")).collect();
    cli(addr, &["produce", "shrinking", "--partition", "0"], &input);
    assert!(segment_files(&data, "shrinking") >= 3, "{} segments", segment_files(&data, "shrinking"));
    assert_eq!(bounds(addr, "shrinking"), (0, 4000));

    // Bad configs change nothing and say why.
    let unknown = cli_fails(addr, &["topic", "alter", "shrinking", "--set", "cleanup.policy=compact"]);
    assert!(unknown.contains("invalid config") && unknown.contains("cleanup.policy"), "{unknown}");
    let bad = cli_fails(addr, &["topic", "alter", "shrinking", "--set", "retention.ms=soon"]);
    assert!(bad.contains("retention.ms") && bad.contains("not an integer"), "{bad}");
    let checked = cli(addr, &["topic", "alter", "shrinking", "--set", "retention.bytes=1", "--validate-only"], "");
    assert!(checked.contains("validated"), "{checked}");
    assert_eq!(config(addr, "shrinking", "retention.bytes"), ("-1".into(), "broker".into()));

    // Retention by size, set on the running topic: old segments go.
    cli(addr, &["topic", "alter", "shrinking", "--set", "retention.bytes=1048576"], "");
    broker.wait_until("retention deleted old segments", || bounds(addr, "shrinking").0 > 0);
    let (earliest, latest) = bounds(addr, "shrinking");
    assert!(latest - earliest < 3000, "about 1-2 MiB kept: {earliest}..{latest}");

    // Deleting records moves the start into the middle of a segment.
    let before = latest - 10;
    let deleted =
        cli(addr, &["topic", "delete-records", "shrinking", "--partition", "0", "--before", &before.to_string()], "");
    assert!(deleted.contains(&format!("now starts at offset {before}")), "{deleted}");
    let past = cli_fails(addr, &["topic", "delete-records", "shrinking", "--partition", "0", "--before", "5000"]);
    assert!(past.contains("offset out of range"), "{past}");
    let read =
        cli(addr, &["consume", "shrinking", "--partition", "0", "--from", "earliest", "--idle-exit-ms", "300"], "");
    assert_eq!(read.lines().count(), 10, "only the last ten remain");
    cli(addr, &["topic", "alter", "shrinking", "--delete", "retention.bytes"], "");
    assert!(broker.terminate().success());

    // After a restart: the configs, and the start, as they were.
    let broker = BrokerProcess::start(&data, &args);
    let addr = broker.addr;
    assert_eq!(bounds(addr, "shrinking"), (before, 4000));
    assert_eq!(config(addr, "shrinking", "segment.bytes"), ("1048576".into(), "topic".into()));
    assert_eq!(config(addr, "shrinking", "retention.bytes"), ("-1".into(), "broker".into()));
    let all = cli(addr, &["topic", "delete-records", "shrinking", "--partition", "0"], "");
    assert!(all.contains("now starts at offset 4000"), "{all}");
    assert!(broker.terminate().success());
}

#[test]
fn log_append_time_and_max_message_bytes_apply_to_native_producers() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    cli(addr, &["topic", "create", "stamped", "--partitions", "1"], "");
    let set = ["--set", "message.timestamp.type=LogAppendTime", "--set", "max.message.bytes=1000"];
    cli(addr, &[&["topic", "alter", "stamped"][..], &set[..]].concat(), "");
    let before = TimestampMs::now().0;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        let old = batch_at(&[b"from 1970"], 1_000);
        client.produce_raw("stamped", PartitionId(0), &old, AckLevel::Durable).await.unwrap();
        let (_, payload) = client.fetch("stamped", PartitionId(0), Offset::ZERO, 1 << 20, 0).await.unwrap();
        let mut records = Vec::new();
        decode_records(&payload, Offset::ZERO, &mut records).unwrap();
        assert_eq!(records.len(), 1);
        assert!(records[0].timestamp_ms >= before, "the append time, not 1970: {}", records[0].timestamp_ms);
        let big = batch_at(&[&[b'x'; 2000]], 1_000);
        let refused = client.produce_raw("stamped", PartitionId(0), &big, AckLevel::Durable).await.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::BATCH_TOO_LARGE), "{refused}");
    });
    // The CLI shows the stamped time too: "<timestamp>\t<value>".
    let args =
        ["consume", "stamped", "--partition", "0", "--from", "earliest", "--idle-exit-ms", "300", "--timestamps"];
    let shown = cli(addr, &args, "");
    let (time, value) = shown.trim_end().split_once('\t').expect("a timestamp column");
    assert_eq!(value, "from 1970");
    assert!(time.parse::<i64>().unwrap() >= before, "{shown}");
    assert!(broker.terminate().success());
}
