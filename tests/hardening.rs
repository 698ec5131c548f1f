//! What a new user and an attacker found (issue "Correctness and
//! hardening"), each checked against the real binary on loopback: one
//! broker per address, a deleted topic takes its group offsets along, keys
//! pick partitions as Kafka's partitioner does, stalled frames hold no
//! budget, a full shard makes room or says why, topic creation is bounded,
//! and every mistake gets one clear line.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringbroker::client::{Client, ClientOptions, Producer, ProducerConfig, ProducerRecord};
use ringbroker::protocol::types::{AckLevel, PartitionId};
use ringbroker::protocol::wire::{self, ErrorCode, FrameKind, ProducePartition, ProduceRequest, Request, Response};
use socket2::{Domain, Socket, Type};
use support::broker::{BrokerProcess, Started};
use support::{batch, read_frame, read_notice, run, temp_dir};

/// A port nothing listens on right now (the OS picks it; it is released
/// before the broker binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the CLI against `broker` with `stdin`.
fn cli(broker: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", &broker.to_string(), "--log", "warn"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the ringbroker CLI");
    child.stdin.take().expect("piped stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    child.wait_with_output().expect("waiting for the CLI")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Asserts that a command succeeded, showing its stderr if not.
fn ok(output: Output) -> Output {
    assert!(output.status.success(), "command failed: {}", stderr(&output));
    output
}

/// Asserts that a command failed with exactly one line on stderr, and
/// returns that line.
fn one_clear_line(output: Output) -> String {
    assert!(!output.status.success(), "expected a failure, got: {}", stdout(&output));
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    text.trim_end().to_string()
}

fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source.into(), 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

fn frame(request_id: u32, request: &Request, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_frame(&mut out, FrameKind::Request, request_id, request, payload).unwrap();
    out
}

fn ping(stream: &mut TcpStream, id: u32) {
    stream.write_all(&frame(id, &Request::Ping, &[])).unwrap();
    let (head, response) = read_frame(stream).unwrap();
    assert_eq!((head.request_id, response), (id, Response::Pong));
}

// 1. Exactly one broker per address.

fn serve_args(listen: &str, shard_ports: &str) -> Vec<String> {
    ["--listen", listen, "--shard-ports", shard_ports, "--cpus", "0"].iter().map(|s| s.to_string()).collect()
}

fn start(data: &Path, args: &[String]) -> Started {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BrokerProcess::start_with(data, &args)
}

#[test]
fn a_second_broker_on_a_served_address_fails_at_start_and_the_first_keeps_every_client() {
    let dir = temp_dir();
    let (port, shard_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let Started::Serving(first) = start(&dir.path().join("a"), &serve_args(&listen, &shard_port.to_string())) else {
        panic!("the first broker starts")
    };
    // The same shared port, another data directory: refused, naming it.
    let Started::Failed { status, stderr } = start(&dir.path().join("b"), &serve_args(&listen, "none")) else {
        panic!("a second broker on {listen} must not start")
    };
    assert!(!status.success());
    assert!(stderr.contains(&listen) && stderr.contains("already in use"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    // Another shared port, but the first broker's shard port: refused too.
    let other = format!("127.0.0.1:{}", free_port());
    let Started::Failed { stderr, .. } = start(&dir.path().join("c"), &serve_args(&other, &shard_port.to_string()))
    else {
        panic!("a broker on another's shard port must not start")
    };
    assert!(stderr.contains(&format!("127.0.0.1:{shard_port}")), "{stderr}");

    // The first broker is undisturbed: every client reaches it.
    ok(cli(first.addr, &["topic", "create", "t", "--partitions", "1"], ""));
    for i in 0..10 {
        ok(cli(first.addr, &["produce", "t"], &format!("event-{i}\n")));
    }
    let read = ok(cli(first.addr, &["consume", "t", "--partition", "0", "--max-events", "10"], ""));
    assert_eq!(stdout(&read).lines().count(), 10, "all ten acknowledged events are in the first broker");
    assert!(first.terminate().success());
}

#[test]
fn two_brokers_starting_at_once_on_one_address_leave_exactly_one_serving() {
    let dir = temp_dir();
    for round in 0..3 {
        let listen = format!("127.0.0.1:{}", free_port());
        let starts: Vec<_> = ["a", "b"]
            .iter()
            .map(|name| {
                let (data, args) = (dir.path().join(format!("{name}{round}")), serve_args(&listen, "none"));
                std::thread::spawn(move || start(&data, &args))
            })
            .collect();
        let outcomes: Vec<Started> = starts.into_iter().map(|start| start.join().unwrap()).collect();
        let serving = outcomes.iter().filter(|outcome| matches!(outcome, Started::Serving(_))).count();
        assert_eq!(serving, 1, "round {round}: exactly one of two racing brokers serves {listen}: {outcomes:?}");
        for outcome in outcomes {
            match outcome {
                Started::Serving(broker) => assert!(broker.terminate().success()),
                Started::Failed { stderr, .. } => assert!(stderr.contains(&listen), "{stderr}"),
            }
        }
    }
}

#[test]
fn a_broker_restarts_on_its_address_at_once() {
    let dir = temp_dir();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = serve_args(&listen, "none");
    let Started::Serving(broker) = start(&dir.path().join("data"), &args) else { panic!("the broker starts") };
    // A connection the broker closes itself when it stops: its side then
    // lingers in TIME_WAIT on the listening port.
    let mut held = TcpStream::connect(broker.addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ping(&mut held, 1);
    assert!(broker.terminate().success());
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    let Started::Serving(again) = start(&dir.path().join("data"), &args) else {
        panic!("a restart on {listen} must not be refused over connections in TIME_WAIT")
    };
    assert!(again.terminate().success());
}

// 2. Deleting a topic deletes its groups' committed offsets.

#[test]
fn deleting_a_topic_forgets_its_group_offsets_and_a_recreated_topic_starts_clean() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    ok(cli(addr, &["topic", "create", "orders", "--partitions", "2"], ""));
    ok(cli(addr, &["produce", "orders", "--partition", "1"], "old1\nold2\n"));
    let first = ok(cli(addr, &["consume", "orders", "--group", "g1", "--idle-exit-ms", "1000"], ""));
    assert_eq!(stdout(&first), "old1\nold2\n");
    let described = stdout(&ok(cli(addr, &["group", "describe", "g1"], "")));
    assert!(described.contains("orders\t1\t2\t2\t0"), "committed 2 on partition 1: {described}");

    ok(cli(addr, &["topic", "delete", "orders"], ""));
    let gone = one_clear_line(cli(addr, &["group", "describe", "g1"], ""));
    assert!(gone.contains("group g1 does not exist"), "its only offsets went with the topic: {gone}");
    // The forgetting is durable: a restart does not bring the offsets back.
    assert!(broker.terminate().success());
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    one_clear_line(cli(addr, &["group", "describe", "g1"], ""));

    ok(cli(addr, &["topic", "create", "orders", "--partitions", "2"], ""));
    ok(cli(addr, &["produce", "orders", "--partition", "1"], "new1\nnew2\nnew3\n"));
    let again = cli(addr, &["consume", "orders", "--group", "g1", "--idle-exit-ms", "1000"], "");
    assert!(again.status.success(), "no refused commits: {}", stderr(&again));
    assert_eq!(stdout(&again), "new1\nnew2\nnew3\n", "nothing new is skipped");
    assert!(broker.terminate().success());
}

// 3. Keys choose the partition, as Kafka's default partitioner does.

/// Partitions of a 4-partition topic that Kafka's murmur2 partitioner
/// gives these keys (computed with kafka-python).
const KAFKA_PLACEMENT: [(&str, u32); 4] = [("21", 0), ("foobar", 2), ("abc", 3), ("account-42", 0)];

#[test]
fn keys_pick_partitions_like_kafka_and_consume_reads_every_partition() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    ok(cli(addr, &["topic", "create", "accounts", "--partitions", "4"], ""));
    let lines: String = KAFKA_PLACEMENT.iter().map(|(key, _)| format!("{key}:value-of-{key}\n")).collect();
    let produced = ok(cli(addr, &["produce", "accounts", "--key-separator", ":"], &lines));
    assert!(
        stderr(&produced).contains("produced 4 events to accounts (partition 0: 2, partition 2: 1, partition 3: 1)"),
        "{}",
        stderr(&produced)
    );
    // Without --partition every partition is read; each line says where.
    let read = stdout(&ok(cli(addr, &["consume", "accounts", "--idle-exit-ms", "1000"], "")));
    let mut placed = BTreeMap::new();
    for line in read.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "partition, offset, value: {line}");
        let key = fields[2].strip_prefix("value-of-").expect("a produced value");
        placed.insert(key.to_string(), fields[0].parse::<u32>().unwrap());
    }
    let expected: BTreeMap<String, u32> = KAFKA_PLACEMENT.iter().map(|(k, p)| (k.to_string(), *p)).collect();
    assert_eq!(placed, expected);

    // The client's producer puts keys in the same places, and one key's
    // events stay in order in its partition.
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        let producer = Producer::new(client, ProducerConfig::default()).unwrap();
        let mut sent = Vec::new();
        for (key, _) in KAFKA_PLACEMENT {
            for _ in 0..3 {
                let record = ProducerRecord::new("accounts", b"again").with_key(key.as_bytes());
                sent.push((key, producer.send(record).await.unwrap()));
            }
        }
        producer.flush().await;
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for (key, future) in sent {
            let partition = future.partition();
            let expected = KAFKA_PLACEMENT.iter().find(|(k, _)| *k == key).unwrap().1;
            assert_eq!(partition, PartitionId(expected), "key {key}");
            let offset = future.await.unwrap().unwrap().get();
            assert!(last.insert(key, offset).is_none_or(|before| before < offset), "key {key} in order");
        }
    });
    assert!(broker.terminate().success());
}

// 4. Stalled frames cannot hold the in-flight budget hostage.

#[test]
fn stalled_frames_cannot_hold_the_budget_hostage() {
    let dir = temp_dir();
    let tuning = dir.path().join("budget.toml");
    // The shard budget of the dev profile; a long frame deadline, so a
    // budget held hostage would show as a stall of many seconds.
    std::fs::write(
        &tuning,
        "[network]\ninflight_bytes_per_shard = 67108864\ninflight_bytes_per_connection = 8388608\n\
         max_frame_bytes = 16777216\nframe_timeout_ms = 20000\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let shard0 = SocketAddr::new(broker.addr.ip(), broker.shard_ports[0]);
    ok(cli(broker.addr, &["topic", "create", "t", "--partitions", "2"], ""));
    let announced = (16u32 << 20).to_be_bytes();
    // Eight clients announce a 16 MiB frame and send nothing more.
    let mut silent = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(shard0).unwrap();
        stream.write_all(&announced).unwrap();
        silent.push(stream);
    }
    // Eight more send half of theirs (8 MiB each, 64 MiB in all: the whole
    // shard budget if it were all admitted) and stall. Their writes block
    // once the broker stops reading them, so each has a thread.
    let half_senders: Vec<_> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(shard0).unwrap();
            std::thread::spawn(move || {
                let _ = stream.write_all(&announced);
                let _ = stream.write_all(&vec![0u8; 8 << 20]);
                stream
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // A well-behaved client: pings and durable produces, each timed.
    let mut good = TcpStream::connect(shard0).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let produce = Request::Produce(ProduceRequest {
        acks: AckLevel::Durable,
        timeout_ms: 10_000,
        partitions: vec![ProducePartition {
            topic: "t".into(),
            partition: PartitionId(0),
            batch_bytes: batch(&[&[7u8; 1024]]).len() as u32,
        }],
    });
    let mut round_trips = Vec::new();
    for id in 0..10u32 {
        let started = Instant::now();
        if id % 2 == 0 {
            ping(&mut good, id);
        } else {
            good.write_all(&frame(id, &produce, &batch(&[&[7u8; 1024]]))).unwrap();
            let (head, response) = read_frame(&mut good).expect("the produce is answered");
            let Response::Produce(answer) = response else { panic!("expected a produce answer, got {response:?}") };
            assert_eq!((head.request_id, answer.partitions[0].error), (id, ErrorCode::NONE));
        }
        round_trips.push(started.elapsed());
    }
    let worst = round_trips.iter().max().unwrap();
    println!("16 stalling connections (8 silent, 8 with 8 MiB sent): well-behaved round trips {round_trips:?}");
    // The frame deadline is 20 s: a budget held hostage stalls for that long.
    assert!(*worst < Duration::from_secs(5), "a round trip took {worst:?}");
    drop(silent);
    drop(good);
    drop(broker);
    for sender in half_senders {
        drop(sender.join());
    }
}

// 5. Connection admission that one client cannot exhaust.

#[test]
fn a_full_shard_evicts_its_longest_idle_connection_and_tells_refused_clients_why() {
    let dir = temp_dir();
    let tuning = dir.path().join("admission.toml");
    std::fs::write(
        &tuning,
        "[network]\nmax_connections_per_shard = 4\nmax_connections_per_ip = 2\nevict_idle_after_ms = 300\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let shard0 = SocketAddr::new(broker.addr.ip(), broker.shard_ports[0]);
    let source = |last: u8| Ipv4Addr::new(127, 0, 0, last);

    // One address may hold two connections; a third is told why.
    let mut from_two = vec![connect_from(source(2), shard0), connect_from(source(2), shard0)];
    for (id, stream) in from_two.iter_mut().enumerate() {
        ping(stream, id as u32);
    }
    let mut third = connect_from(source(2), shard0);
    let notice = read_notice(&mut third);
    assert_eq!(notice.code, ErrorCode::CONNECTION_REFUSED);
    assert!(notice.message.contains("too many connections from 127.0.0.2"), "{}", notice.message);

    // Fill the shard: four connections, all idle. The idle time below is
    // the behaviour under test, not a wait for something else.
    let mut idle = vec![connect_from(source(3), shard0), connect_from(source(4), shard0)];
    for (id, stream) in idle.iter_mut().enumerate() {
        ping(stream, 10 + id as u32);
    }
    std::thread::sleep(Duration::from_millis(600));
    // A newcomer gets in: the connection idle the longest makes room, and
    // is told why before it is closed.
    let mut newcomer = connect_from(source(5), shard0);
    ping(&mut newcomer, 20);
    let evicted = read_notice(&mut from_two[0]);
    assert_eq!(evicted.code, ErrorCode::CONNECTION_REFUSED);
    assert!(evicted.message.contains("closed to make room"), "{}", evicted.message);
    // The others are still served.
    ping(&mut from_two[1], 21);
    ping(&mut idle[1], 22);

    // A CLI run refused for its address says why in one line. (Room first:
    // the shard counts a connection until it has noticed the close.)
    drop((from_two, idle, newcomer));
    let shard1 = SocketAddr::new(broker.addr.ip(), broker.shard_ports[1]);
    broker.wait_until("shard 0 has closed them", || broker.shard_counter(shard1, 0, "connections_open") == 0);
    let mut crowd = vec![connect_from(source(1), shard0), connect_from(source(1), shard0)];
    for (id, stream) in crowd.iter_mut().enumerate() {
        ping(stream, 30 + id as u32);
    }
    let refused = one_clear_line(cli(shard0, &["topic", "list"], ""));
    assert!(refused.contains("too many connections from 127.0.0.1"), "{refused}");
    drop(crowd);
    assert!(broker.terminate().success());
}

// 6. Topic creation is bounded.

/// Bytes of disk the files under `dir` take (allocated blocks, not sizes).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { disk_usage(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

#[test]
fn topic_creation_is_bounded_by_the_partition_limit_and_the_free_space() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let tuning = dir.path().join("bounded.toml");
    std::fs::write(&tuning, "[storage]\nsegment_bytes = 67108864\n[topics]\npartitions_max = 10\n").unwrap();
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    // Six partitions of 64 MiB segments reserve a few MiB each, not 384 MiB.
    ok(cli(broker.addr, &["topic", "create", "six", "--partitions", "6"], ""));
    let used = disk_usage(&data.join("topics"));
    println!("6 new partitions with 64 MiB segments take {} KiB of disk", used >> 10);
    assert!(used <= 6 * (8 << 20), "{used} bytes for six empty partitions");
    // The broker's partition limit.
    let refused = one_clear_line(cli(broker.addr, &["topic", "create", "five", "--partitions", "5"], ""));
    assert!(refused.contains("topics.partitions_max") && refused.contains("already has 6"), "{refused}");
    ok(cli(broker.addr, &["topic", "create", "four", "--partitions", "4"], ""));
    assert!(broker.terminate().success());

    // A creation that would not leave the reserved free space is refused.
    std::fs::write(&tuning, "[storage]\nfree_bytes_reserved = 1125899906842624\n").unwrap();
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    let refused = one_clear_line(cli(broker.addr, &["topic", "create", "huge", "--partitions", "1"], ""));
    assert!(refused.contains("free_bytes_reserved") && refused.contains("is free"), "{refused}");
    assert!(broker.terminate().success());
}

// 7. Papercuts: every message a user sees is one clear line.

#[test]
fn the_cli_explains_each_mistake_once_and_plainly() {
    let dir = temp_dir();
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let unreachable = one_clear_line(cli(nobody, &["topic", "list"], ""));
    assert_eq!(unreachable.matches("Connection refused").count(), 1, "{unreachable}");

    let serve = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ringbroker")).arg("serve").args(args).output().expect("running serve")
    };
    let missing = one_clear_line(serve(&["--tuning", "/nonexistent/ringbroker.toml"]));
    assert_eq!(missing.matches("No such file").count(), 1, "{missing}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\nsegment_bytes = 100\n").unwrap();
    let named = one_clear_line(serve(&["--tuning", bad.to_str().unwrap()]));
    assert!(named.contains("storage.segment_bytes 100") && !named.contains("segment_bytes_max"), "{named}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let not_dir = one_clear_line(serve(&["--data", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]));
    assert!(not_dir.contains("is not a directory") && !not_dir.contains(".lock"), "{not_dir}");

    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let addr = broker.addr;
    let negative = one_clear_line(cli(addr, &["topic", "create", "z", "--partitions", "-1"], ""));
    assert!(negative.contains("--partitions -1") && negative.contains("1 to 4096"), "{negative}");
    let created = ok(cli(addr, &["topic", "create", "z0", "--partitions", "1"], ""));
    assert_eq!(stdout(&created), "created topic z0 with 1 partition\n");
    let nosuch = one_clear_line(cli(addr, &["group", "describe", "nosuchgroup"], ""));
    assert!(nosuch.contains("group nosuchgroup does not exist"), "{nosuch}");
    ok(cli(addr, &["produce", "z0"], "a\nb\nc\n"));
    let range = one_clear_line(cli(addr, &["consume", "z0", "--partition", "0", "--from", "99"], ""));
    assert!(range.contains("offset 99 is out of range for z0-0: it holds offsets 0 to 2"), "{range}");
    let fire_and_forget = ok(cli(addr, &["produce", "z0", "--acks", "none"], "d\ne\n"));
    let said = stderr(&fire_and_forget);
    assert!(said.starts_with("sent 2 events") && !said.contains("produced"), "{said}");
    let no_topic = one_clear_line(cli(addr, &["produce", "nosuch"], "x\n"));
    assert!(no_topic.contains("topic nosuch does not exist"), "{no_topic}");
    assert!(broker.terminate().success());

    // Logs redirected to a file carry no colour codes.
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shard-ports", "none", "--cpus", "0", "--log", "info"])
        .arg("--data")
        .arg(dir.path().join("logged"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("shard serving"), "{logged}");
    assert!(!logged.contains('\u{1b}'), "no ANSI escape codes in a log file: {logged:?}");
}
