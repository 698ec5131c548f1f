//! The Kafka API against clients nobody here wrote: kcat (librdkafka),
//! confluent-kafka (librdkafka 2.16) and kafka-python, each run against the
//! real binary on loopback.
//!
//! kcat comes from Debian and the Python clients from PyPI, installed by
//! `.ci/run` (Python into a venv whose interpreter it names in
//! RB_KAFKA_PYTHON). Where a client is missing a test says so and returns,
//! unless RB_REQUIRE_KAFKA_CLIENTS is set (CI sets it): then it fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::broker::{BrokerProcess, Started};
use support::clients::{clients_script, kcat, python, run_client};
use support::temp_dir;

/// Runs a client, asserting it succeeded.
fn run(program: &Path, args: &[&str], stdin: &str) -> Output {
    let output = run_client(program, args, stdin);
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The JSON lines a client printed.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

fn kafka(broker: &BrokerProcess) -> String {
    broker.kafka_addr.expect("the Kafka API is on").to_string()
}

#[test]
fn kcat_lists_every_shard_as_a_broker() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let listed = stdout(&run(&kcat, &["-b", &kafka(&broker), "-L", "-m", "10"], ""));
    assert!(listed.contains(" 2 brokers:"), "{listed}");
    assert!(listed.contains("broker 0 at 127.0.0.1:") && listed.contains("broker 1 at 127.0.0.1:"), "{listed}");
    assert!(!listed.contains(&format!("at {}", kafka(&broker))), "the bootstrap address is not advertised: {listed}");
    assert!(broker.terminate().success());
}

#[test]
fn kcat_round_trips_keys_and_headers_byte_for_byte() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let bootstrap = kafka(&broker);
    let lines: Vec<String> = (0..50).map(|i| format!("key-{i}|value {i} with spaces, ünïcode and \u{1F600}")).collect();
    run(
        &kcat,
        &["-b", &bootstrap, "-P", "-t", "roundtrip", "-K", "|", "-H", "trace=abc", "-H", "empty="],
        &(lines.join("\n") + "\n"),
    );
    let read = stdout(&run(
        &kcat,
        &["-b", &bootstrap, "-C", "-t", "roundtrip", "-o", "beginning", "-e", "-f", "%k|%s|%h\n"],
        "",
    ));
    let mut got: Vec<String> = read.lines().map(str::to_string).collect();
    got.sort();
    let mut expected: Vec<String> = lines.iter().map(|line| format!("{line}|trace=abc,empty=")).collect();
    expected.sort();
    assert_eq!(got, expected);
    assert!(broker.terminate().success());
}

/// The codec of the first batch still held in `topic`'s partition 0, read
/// with the native client: what the producer sent, stored as produced.
fn stored_codec(broker: &BrokerProcess, topic: &str) -> ringbroker::protocol::batch::Compression {
    let (addr, topic) = (broker.addr, topic.to_string());
    support::run(move || async move {
        use ringbroker::client::{Client, ClientOptions};
        use ringbroker::protocol::types::{Offset, PartitionId};
        use ringbroker::protocol::wire::OffsetSpec;
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        let earliest = client.list_offsets(&topic, PartitionId(0), OffsetSpec::Earliest).await.unwrap();
        let from = earliest.unwrap_or(Offset::ZERO);
        let (_, payload) = client.fetch(&topic, PartitionId(0), from, 1 << 20, 0).await.unwrap();
        ringbroker::protocol::batch::BatchView::parse(&payload, usize::MAX).unwrap().compression()
    })
}

fn native_values(broker: &BrokerProcess, topic: &str) -> Vec<String> {
    let args = ["consume", topic, "--partition", "0", "--from", "earliest", "--idle-exit-ms", "500"];
    support::cli(broker.addr, &args, "").lines().map(str::to_string).collect()
}

/// kcat `-z` and confluent-kafka `compression.type` with each codec: the
/// broker stores the batches as produced, and Kafka clients and the native
/// CLI read back exactly what was sent.
#[test]
fn compressed_batches_from_kafka_clients_read_back_byte_for_byte_on_both_apis() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let bootstrap = kafka(&broker);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let lines: Vec<String> = (0..100).map(|i| format!("key-{i}|{codec} value {i}, {codec} value {i}")).collect();
        run(
            &kcat,
            &["-b", &bootstrap, "-P", "-t", &topic, "-p", "0", "-K", "|", "-z", codec],
            &(lines.join("\n") + "\n"),
        );
        let read = stdout(&run(
            &kcat,
            &["-b", &bootstrap, "-C", "-t", &topic, "-p", "0", "-o", "beginning", "-e", "-f", "%k|%s\n"],
            "",
        ));
        assert_eq!(read.lines().collect::<Vec<_>>(), lines, "{codec}: kcat reads back what it sent");
        assert_eq!(stored_codec(&broker, &topic).name(), codec, "stored as produced");
        let values: Vec<String> = lines.iter().map(|line| line.split_once('|').unwrap().1.to_string()).collect();
        assert_eq!(native_values(&broker, &topic), values, "{codec}: the native CLI reads the same");
    }
    if let Some(python) = python() {
        for codec in ["gzip", "snappy", "lz4", "zstd"] {
            let topic = format!("confluent-{codec}");
            let script = clients_script();
            let output =
                run(&python, &[script.to_str().unwrap(), "confluent-compressed", &bootstrap, &topic, codec, "200"], "");
            let report = json_lines(&stdout(&output)).pop().expect("a report");
            assert_eq!(report["delivered"], 200, "{codec}: {report}");
            let sent: Vec<String> = (0..200).map(|i| format!("{codec} value {i}, {codec} value {i}")).collect();
            let values: Vec<String> =
                report["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            assert_eq!(values, sent, "{codec}: confluent-kafka reads back what it sent");
            assert_eq!(stored_codec(&broker, &topic).name(), codec, "stored as produced");
            assert_eq!(native_values(&broker, &topic), sent, "{codec}: the native CLI reads the same");
        }
    }
    assert!(broker.terminate().success());
}

/// Headers and timestamps cross between the protocols: kcat's show up in
/// `ringbroker consume --headers --timestamps`, and the CLI's
/// `produce --header` in kcat's `%h`.
#[test]
fn headers_and_timestamps_cross_between_the_cli_and_kcat() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let bootstrap = kafka(&broker);
    let cli = |args: &[&str], stdin: &str| support::cli(broker.addr, args, stdin);
    cli(&["topic", "create", "headed", "--partitions", "1"], "");
    run(&kcat, &["-b", &bootstrap, "-P", "-t", "headed", "-p", "0", "-H", "trace=t-1", "-H", "empty="], "from kcat\n");
    cli(&["produce", "headed", "--partition", "0", "--header", "trace=t-2", "--header", "bare"], "from the cli\n");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let native = cli(
        &[
            "consume",
            "headed",
            "--partition",
            "0",
            "--from",
            "earliest",
            "--idle-exit-ms",
            "500",
            "--headers",
            "--timestamps",
        ],
        "",
    );
    let lines: Vec<Vec<&str>> = native.lines().map(|line| line.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{native}");
    assert_eq!(lines[0][1..], ["trace=t-1,empty=", "from kcat"]);
    assert_eq!(lines[1][1..], ["trace=t-2,bare", "from the cli"]);
    for line in &lines {
        let timestamp: i64 = line[0].parse().unwrap();
        assert!((before - 60_000..=before).contains(&timestamp), "a produce-time timestamp: {line:?}");
    }
    let read = stdout(&run(
        &kcat,
        &["-b", &bootstrap, "-C", "-t", "headed", "-p", "0", "-o", "beginning", "-e", "-f", "%s|%h\n"],
        "",
    ));
    // kcat prints a null header value as NULL: the CLI's bare header stayed null.
    assert_eq!(read, "from kcat|trace=t-1,empty=\nfrom the cli|trace=t-2,bare=NULL\n");
    assert!(broker.terminate().success());
}

#[test]
fn kcat_group_members_each_get_every_message_once() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let bootstrap = kafka(&broker);
    run(&kcat, &["-b", &bootstrap, "-L", "-t", "shared"], "");
    let messages: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    run(&kcat, &["-b", &bootstrap, "-P", "-t", "shared"], &(messages.join("\n") + "\n"));
    let members: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(&kcat)
                .args(["-b", &bootstrap, "-G", "kcat-group", "shared", "-o", "beginning", "-e", "-f", "%s\n"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for member in members {
        let output = member.wait_with_output().unwrap();
        seen.extend(stdout(&output).lines().map(str::to_string));
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 200, "every message once, not {} times in all", seen.len());
    assert_eq!(distinct.len(), 200);
    assert!(broker.terminate().success());
}

#[test]
fn node_mode_serves_everything_through_one_advertised_broker() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &["--kafka-mode", "node"]);
    let bootstrap = kafka(&broker);
    let listed = stdout(&run(&kcat, &["-b", &bootstrap, "-L", "-t", "node-topic", "-m", "10"], ""));
    assert!(listed.contains(" 1 brokers:"), "{listed}");
    assert!(listed.contains(&format!("broker 0 at {bootstrap}")), "the bootstrap address is the broker: {listed}");
    let partitions = listed.matches("leader 0,").count();
    assert!(partitions >= 2, "partitions on both shards, all led by broker 0: {listed}");
    let lines: Vec<String> = (0..100).map(|i| format!("k{i}|v{i}")).collect();
    run(&kcat, &["-b", &bootstrap, "-P", "-t", "node-topic", "-K", "|"], &(lines.join("\n") + "\n"));
    let read = stdout(&run(
        &kcat,
        &["-b", &bootstrap, "-C", "-t", "node-topic", "-o", "beginning", "-e", "-f", "%k|%s\n"],
        "",
    ));
    let mut got: Vec<&str> = read.lines().collect();
    got.sort();
    let mut expected: Vec<&str> = lines.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(got, expected);
    // The one port is served by both shards (the kernel spreads the
    // connections), and each forwards what the other's partitions need.
    let counter = |shard, name| broker.shard_counter(broker.addr, shard, name);
    let (out, into) = (
        counter(0, "forwarded_out") + counter(1, "forwarded_out"),
        counter(0, "forwarded_in") + counter(1, "forwarded_in"),
    );
    assert!(out > 0 && into > 0, "forwarded out {out}, in {into}");
    // A group in node mode: two members, each message exactly once.
    let members: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(&kcat)
                .args(["-b", &bootstrap, "-G", "node-group", "node-topic", "-o", "beginning", "-e", "-f", "%s\n"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for member in members {
        seen.extend(stdout(&member.wait_with_output().unwrap()).lines().map(str::to_string));
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), distinct.len()), (100, 100), "every message once: {seen:?}");
    assert!(broker.terminate().success());
}

#[test]
fn kafka_python_produces_consumes_and_commits() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let script = clients_script();
    let output = run(&python, &[script.to_str().unwrap(), "kafka-python", &kafka(&broker), "python-topic", "300"], "");
    let report = json_lines(&stdout(&output)).pop().expect("a report");
    assert_eq!(report["produced"], 300, "{report}");
    assert_eq!(report["consumed"], 300, "{report}");
    assert_eq!(report["distinct"], 300, "{report}");
    assert_eq!(report["committed"], 300, "the committed offsets cover everything: {report}");
    assert!(broker.terminate().success());
}

#[test]
fn librdkafka_finds_every_feature_it_needs() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let script = clients_script();
    let output = run(&python, &[script.to_str().unwrap(), "debug-features", &kafka(&broker), "features"], "");
    let report = json_lines(&stdout(&output)).pop().expect("a report");
    assert_eq!(report["got"], "b", "{report}");
    let log = String::from_utf8_lossy(&output.stderr);
    // Not claimed yet, each for a reason: SASL arrives with the security
    // work; the KIP-848 consumer protocol (ConsumerGroupHeartbeat) is not
    // served, so librdkafka uses the classic one, which it does enable
    // (BrokerGroupCoordinator, checked below).
    let not_claimed = ["Sasl", "SaslHandshake", "SaslAuthReq", "BrokerBalancedConsumer"];
    let disabled: BTreeSet<&str> = log
        .lines()
        .filter_map(|line| line.split("Disabling feature ").nth(1))
        .map(str::trim)
        .filter(|feature| !not_claimed.contains(feature))
        .collect();
    assert!(disabled.is_empty(), "librdkafka disabled {disabled:?}");
    assert!(log.contains("Enabling feature BrokerGroupCoordinator"), "groups are on");
    assert!(log.contains("Enabling feature MsgVer2"), "RecordBatch v2 is on");
    assert!(log.contains("Enabling feature IdempotentProducer"), "InitProducerId is served");
    for refusal in ["UNSUPPORTED_VERSION", "Unsupported version"] {
        assert!(!log.contains(refusal), "a request version was refused: {refusal}");
    }
    assert!(broker.terminate().success());
}

/// Two consecutive free ports (a broker's Kafka ports must stay the same
/// across a restart for clients to find it again).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

/// A running confluent-kafka group member whose printed lines are read on
/// a thread and collected.
struct Member {
    child: Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    values: Vec<String>,
    assigned: Vec<serde_json::Value>,
}

impl Member {
    fn start(python: &PathBuf, bootstrap: &str, idle_seconds: &str) -> Member {
        let script = clients_script();
        let mut child = Command::new(python)
            .args([script.to_str().unwrap(), "confluent-consume", bootstrap, "orders", "billing", idle_seconds])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = send.send(value);
                }
            }
        });
        Member { child, lines, values: Vec::new(), assigned: Vec::new() }
    }

    /// Takes in what the member printed so far.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            if let Some(value) = line["value"].as_str() {
                self.values.push(value.to_string());
            }
            if line.get("assigned").is_some() {
                self.assigned.push(line["assigned"].clone());
            }
        }
    }
}

fn produce(python: &Path, bootstrap: &str, first: usize, count: usize) {
    let script = clients_script();
    let (first, count) = (first.to_string(), count.to_string());
    let output = run(python, &[script.to_str().unwrap(), "confluent-produce", bootstrap, "orders", &first, &count], "");
    let report = json_lines(&stdout(&output)).pop().expect("a report");
    assert_eq!(report["delivered"].as_u64(), Some(count.parse().unwrap()), "acks=all delivery reports: {report}");
}

/// Waits until the members have printed `expected` values in all.
fn wait_for(members: &mut [Member], expected: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        members.iter_mut().for_each(Member::drain);
        let total: usize = members.iter().map(|member| member.values.len()).sum();
        if total >= expected {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {total} of {expected} consumed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn confluent_kafka_group_survives_a_member_kill_and_a_broker_restart() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let (listen, base) = (free_port_pair(), free_port_pair());
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--shard-ports",
        "auto",
        "--cpus",
        "0,1",
        "--metrics-listen",
        "127.0.0.1:0",
        "--kafka-listen",
        &format!("127.0.0.1:{listen}"),
        "--kafka-shard-ports",
        &base.to_string(),
    ];
    let data = dir.path().join("data");
    let Started::Serving(broker) = BrokerProcess::start_with(&data, &args) else { panic!("the broker starts") };
    let bootstrap = kafka(&broker);
    // Four partitions, so three members all get some.
    let created = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", &broker.addr.to_string(), "topic", "create", "orders", "--partitions", "4"])
        .output()
        .unwrap();
    assert!(created.status.success());

    let mut members: Vec<Member> = (0..3).map(|_| Member::start(&python, &bootstrap, "120")).collect();
    produce(&python, &bootstrap, 0, 300);
    wait_for(&mut members, 300, "three members");
    // Kill one member (it has committed everything it printed): its
    // partitions move to the other two.
    let mut killed = members.remove(0);
    killed.child.kill().unwrap();
    let _ = killed.child.wait();
    killed.drain();
    produce(&python, &bootstrap, 300, 300);
    wait_for(&mut members, 600 - killed.values.len(), "after a member was killed");

    // Restart the broker on the same ports: the members carry on from their
    // committed offsets.
    assert!(broker.terminate().success());
    let Started::Serving(broker) = BrokerProcess::start_with(&data, &args) else { panic!("the broker restarts") };
    produce(&python, &bootstrap, 600, 300);
    wait_for(&mut members, 900 - killed.values.len(), "after the broker restarted");
    std::thread::sleep(Duration::from_millis(500));
    members.iter_mut().for_each(Member::drain);

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for value in killed.values.iter().chain(members.iter().flat_map(|member| &member.values)) {
        *counts.entry(value.clone()).or_default() += 1;
    }
    let twice: Vec<&String> = counts.iter().filter(|(_, count)| **count > 1).map(|(value, _)| value).collect();
    assert_eq!(counts.len(), 900, "every message consumed");
    assert!(twice.is_empty(), "each message once (commits are synchronous, per message): {twice:?}");
    assert!(killed.values.len() < 300, "the killed member had a share, not everything");
    for mut member in members {
        let _ = member.child.kill();
        let _ = member.child.wait();
    }
    assert!(broker.terminate().success());
}

/// Topic configs and record deletion through the admin clients of
/// confluent-kafka and kafka-python: configs at creation, describe,
/// incremental and whole-set changes, an unknown config refused with
/// INVALID_CONFIG, LogAppendTime seen by the consumer, DeleteRecords
/// moving the low watermark; the native CLI sees the same.
#[test]
fn admin_clients_manage_topic_configs_and_delete_records() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let script = clients_script();
    let output = run(&python, &[script.to_str().unwrap(), "confluent-admin", &kafka(&broker), "administered"], "");
    let report = json_lines(&stdout(&output)).pop().expect("a report");
    assert_eq!(report["created administered"], "ok", "{report}");
    assert_eq!(report["created administered-bad"], "INVALID_CONFIG", "{report}");
    assert_eq!(report["described"]["retention.ms"], serde_json::json!(["3600000", false]), "{report}");
    assert_eq!(report["described"]["compression.type"], serde_json::json!(["producer", true]), "{report}");
    assert_eq!(report["altered"]["compression.type"], serde_json::json!(["zstd", false]), "{report}");
    assert_eq!(report["altered"]["retention.ms"][1], true, "deleted: the broker's again: {report}");
    assert_eq!(report["bad alter"], "INVALID_CONFIG", "{report}");
    assert_eq!(report["low watermark"], serde_json::json!([5]), "{report}");
    assert_eq!(report["watermarks"], serde_json::json!([5, 10]), "{report}");
    let read = report["read"].as_array().unwrap();
    let offsets: Vec<i64> = read.iter().map(|record| record[0].as_i64().unwrap()).collect();
    assert_eq!(offsets, vec![5, 6, 7, 8, 9], "{report}");
    for record in read {
        assert_eq!(record[2], 2, "TIMESTAMP_LOG_APPEND_TIME: {report}");
        let stamp = record[3].as_i64().unwrap();
        assert!(stamp > 1000 && stamp <= report["now"].as_i64().unwrap(), "the append time: {report}");
    }
    assert_eq!(stored_codec(&broker, "administered").name(), "zstd", "recompressed to the topic's codec");
    let described = support::cli(broker.addr, &["topic", "describe", "administered"], "");
    assert!(described.contains("compression.type\tzstd\ttopic"), "{described}");

    let output = run(&python, &[script.to_str().unwrap(), "kafka-python-admin", &kafka(&broker), "administered"], "");
    let report = json_lines(&stdout(&output)).pop().expect("a report");
    assert_eq!(report["described"]["retention.bytes"]["value"], "10485760", "{report}");
    assert_eq!(report["deleted"]["0"]["error_code"], 0, "{report}");
    assert_eq!(report["deleted"]["0"]["low_watermark"], 10, "everything deleted: {report}");
    let described = support::cli(broker.addr, &["topic", "describe", "administered"], "");
    assert!(described.lines().any(|line| line.starts_with("0\t") && line.ends_with("\t10\t10")), "{described}");
    assert!(broker.terminate().success());
}
