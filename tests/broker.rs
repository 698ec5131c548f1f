//! The real `ringbroker` binary on loopback, two shards, driven by the
//! client, the CLI and raw sockets.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringbroker::client::{
    Client, ClientOptions, PartitionConsumer, Producer, ProducerConfig, ProducerRecord, StartPosition,
};
use ringbroker::protocol::batch::BatchView;
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::{self, ErrorCode, FrameKind, Request, Response};
use support::broker::BrokerProcess;
use support::{run, temp_dir};

const PARTITIONS: u32 = 4;

fn counter(stats: &ringbroker::protocol::wire::StatsResponse, name: &str) -> u64 {
    stats.shards.iter().flat_map(|shard| &shard.counters).filter(|(n, _)| n == name).map(|(_, v)| v).sum()
}

fn value_of(partition: u32, seq: u32) -> Vec<u8> {
    format!("p{partition}-event-{seq:06}").into_bytes()
}

/// Creates `topic` with [`PARTITIONS`] partitions and returns each
/// partition's owning shard, in partition order.
async fn create_topic_and_owners(client: &Client, topic: &str) -> Vec<u16> {
    client.create_topic(topic, PARTITIONS).await.unwrap();
    let metadata = client.metadata(Some(vec![topic.into()])).await.unwrap();
    metadata.topics[0].partitions.iter().map(|p| p.shard.0).collect()
}

/// Produces `per_partition` events to each partition of `topic` and returns
/// their acknowledged offsets, partition by partition.
async fn produce_all(client: &Client, topic: &str, per_partition: u32) -> Vec<Vec<Offset>> {
    let producer =
        Producer::new(client.clone(), ProducerConfig { batch_bytes: 16 << 10, ..ProducerConfig::default() }).unwrap();
    let mut pending = Vec::new();
    for seq in 0..per_partition {
        for partition in 0..PARTITIONS {
            let value = value_of(partition, seq);
            let record = ProducerRecord::new(topic, &value).with_partition(PartitionId(partition));
            pending.push((partition, producer.send(record).await.unwrap()));
        }
    }
    producer.flush().await;
    let mut offsets = vec![Vec::new(); PARTITIONS as usize];
    for (partition, future) in pending {
        offsets[partition as usize].push(future.await.unwrap().expect("durable acks carry offsets"));
    }
    offsets
}

/// Reads every event of every partition from the start; checks each is the
/// expected value at the expected offset, in order.
async fn check_all(client: &Client, topic: &str, per_partition: u32) {
    for partition in 0..PARTITIONS {
        let mut consumer =
            PartitionConsumer::new(client.clone(), topic, PartitionId(partition), StartPosition::Earliest);
        let mut seen = 0u32;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen < per_partition {
            assert!(Instant::now() < deadline, "partition {partition}: only {seen} of {per_partition} events");
            for record in consumer.poll(Duration::from_millis(200)).await.unwrap() {
                assert_eq!(record.offset, Offset::new(u64::from(seen)).unwrap());
                assert_eq!(record.value.as_deref(), Some(&value_of(partition, seen)[..]));
                seen += 1;
            }
        }
        assert_eq!(
            consumer.poll(Duration::from_millis(50)).await.unwrap().len(),
            0,
            "nothing beyond what was produced"
        );
    }
}

#[test]
fn shard_aware_clients_reach_the_owners_directly_and_nothing_is_forwarded() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        let owners = create_topic_and_owners(&client, "orders").await;
        assert_eq!(owners, vec![0, 1, 0, 1], "partitions are spread over both shards");
        let offsets = produce_all(&client, "orders", 500).await;
        for partition in offsets {
            let expected: Vec<Offset> = (0..500).map(|i| Offset::new(i).unwrap()).collect();
            assert_eq!(partition, expected);
        }
        check_all(&client, "orders", 500).await;
        let stats = client.stats().await.unwrap();
        assert_eq!(counter(&stats, "forwarded_out"), 0, "shard-aware clients cause no forwarding");
        assert_eq!(counter(&stats, "events_in"), 2000);
        assert!(counter(&stats, "flushes") > 0);
        // Every shard answered durable produce requests and timed them.
        assert!(stats.shards.iter().all(|shard| !shard.produce_latency_us.is_empty()), "{stats:?}");
        // And timed them from their first bytes read to their answer written.
        assert!(stats.shards.iter().all(|shard| !shard.produce_request_latency_us.is_empty()), "{stats:?}");
    });
    assert!(broker.terminate().success());
}

/// `--shards 4` on two CPUs: four shards, two to a CPU, each owning and
/// serving its own partition.
#[test]
fn more_shards_than_cpus_share_them_and_serve_every_partition() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &["--shards", "4"]);
    assert_eq!(broker.shard_ports.len(), 4);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        assert_eq!(create_topic_and_owners(&client, "shared-cpus").await, vec![0, 1, 2, 3]);
        produce_all(&client, "shared-cpus", 300).await;
        check_all(&client, "shared-cpus", 300).await;
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.shards.len(), 4);
        for shard in &stats.shards {
            let events_in = shard.counters.iter().find(|(name, _)| name == "events_in").map(|(_, value)| *value);
            assert_eq!(events_in, Some(300), "shard {:?} took its partition's events", shard.shard);
        }
        assert_eq!(counter(&stats, "forwarded_out"), 0);
    });
    assert!(broker.terminate().success());
}

#[test]
fn a_simple_client_is_served_through_forwarding() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let options = ClientOptions { shard_aware: false, ..ClientOptions::default() };
        let client = Client::connect(addr, options).await.unwrap();
        client.create_topic("events", PARTITIONS).await.unwrap();
        produce_all(&client, "events", 200).await;
        check_all(&client, "events", 200).await;
        let stats = client.stats().await.unwrap();
        assert!(counter(&stats, "forwarded_out") > 0, "a shard that does not own a partition forwards");
        assert_eq!(counter(&stats, "forwarded_out"), counter(&stats, "forwarded_in"));
    });
    assert!(broker.terminate().success());
}

/// A fetch answer of thousands of cached batches (more pieces than one
/// vectored write takes) reaches the consumer whole and in order, served
/// by the owner and through forwarding.
#[test]
fn fetches_of_thousands_of_small_batches_arrive_whole() {
    const EVENTS: u32 = 3000;
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("small", 1).await.unwrap();
        // One record per batch: each is a piece of its own in the cache.
        let config = ProducerConfig {
            batch_bytes: 1,
            linger: Duration::ZERO,
            acks: AckLevel::Written,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config).unwrap();
        let mut pending = Vec::new();
        for seq in 0..EVENTS {
            let value = value_of(0, seq);
            pending.push(
                producer.send(ProducerRecord::new("small", &value).with_partition(PartitionId(0))).await.unwrap(),
            );
        }
        producer.flush().await;
        for future in pending {
            future.await.unwrap();
        }
        let forwarding =
            Client::connect(addr, ClientOptions { shard_aware: false, ..ClientOptions::default() }).await.unwrap();
        for client in [client.clone(), forwarding] {
            let mut consumer = PartitionConsumer::new(client, "small", PartitionId(0), StartPosition::Earliest)
                .with_max_bytes(4 << 20);
            let mut seen = 0u32;
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen < EVENTS {
                assert!(Instant::now() < deadline, "only {seen} of {EVENTS} events");
                for record in consumer.poll(Duration::from_millis(200)).await.unwrap() {
                    assert_eq!(record.offset, Offset::new(u64::from(seen)).unwrap());
                    assert_eq!(record.value.as_deref(), Some(&value_of(0, seen)[..]));
                    seen += 1;
                }
            }
        }
    });
    // A reader with a 4 KiB receive buffer that asks for the partition 24
    // times over (more than the kernel buffers for one socket) and starts
    // reading only later: the broker's writes find the socket full many
    // times (each response is 3000 pieces) and must resume exactly where
    // they stopped.
    const FETCHES: u32 = 24;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream = StdTcpStream::from(socket);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let fetch = Request::Fetch(wire::FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 4 << 20,
        partitions: vec![wire::FetchPartition {
            topic: "small".into(),
            partition: PartitionId(0),
            offset: Offset::ZERO,
            max_bytes: 4 << 20,
        }],
    });
    for request_id in 0..FETCHES {
        stream.write_all(&frame(request_id, &fetch, &[])).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for request_id in 0..FETCHES {
        let (answered, response, payload) = read_response_with_payload(&mut stream).unwrap();
        assert_eq!(answered, request_id, "responses in request order");
        let Response::Fetch(response) = response else { panic!("expected a fetch response, got {response:?}") };
        assert_eq!(response.partitions[0].bytes as usize, payload.len());
        let (mut rest, mut seen) = (&payload[..], 0u32);
        while !rest.is_empty() {
            let batch = BatchView::parse(rest, 1 << 20).expect("whole, valid batches");
            for record in batch.records().unwrap() {
                let record = record.unwrap();
                assert_eq!(record.value, Some(&value_of(0, seen)[..]), "response {request_id}, event {seen}");
                seen += 1;
            }
            rest = &rest[batch.total_len()..];
        }
        assert_eq!(seen, EVENTS, "response {request_id} holds every event");
    }
    assert!(broker.terminate().success());
}

#[test]
fn a_restart_after_sigterm_recovers_every_event_and_topic() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("durable", PARTITIONS).await.unwrap();
        client.create_topic("doomed", 1).await.unwrap();
        produce_all(&client, "durable", 300).await;
        client.delete_topic("doomed").await.unwrap();
    });
    assert!(broker.terminate().success(), "SIGTERM is a clean exit");

    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        let names: Vec<String> = client.metadata(None).await.unwrap().topics.into_iter().map(|t| t.name).collect();
        assert_eq!(names, vec!["durable".to_string()]);
        check_all(&client, "durable", 300).await;
        // Offsets continue where they were.
        let offsets = produce_all(&client, "durable", 1).await;
        assert_eq!(offsets[0], vec![Offset::new(300).unwrap()]);
    });
    assert!(broker.terminate().success());
}

#[test]
fn kill_9_under_load_loses_no_durably_acknowledged_event() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    let acked = run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("crash", 2).await.unwrap();
        let producer =
            Producer::new(client.clone(), ProducerConfig { batch_bytes: 4 << 10, ..ProducerConfig::default() })
                .unwrap();
        let mut pending = Vec::new();
        let mut acked = Vec::new();
        let mut broker = Some(broker);
        for seq in 0..20_000u32 {
            let value = format!("crash-{seq:06}").into_bytes();
            let record = ProducerRecord::new("crash", &value).with_partition(PartitionId(seq % 2));
            match producer.send(record).await {
                Ok(future) => pending.push((seq, future)),
                Err(_) => break,
            }
            // Collect what completed; kill the broker once enough is acknowledged.
            if pending.len() >= 64 {
                for (seq, future) in pending.drain(..) {
                    if let Ok(Some(offset)) = future.await {
                        acked.push((seq, offset));
                    }
                }
            }
            if acked.len() >= 3000 {
                if let Some(broker) = broker.take() {
                    broker.kill9();
                }
            }
        }
        for (seq, future) in pending {
            if let Ok(Some(offset)) = future.await {
                acked.push((seq, offset));
            }
        }
        assert!(broker.is_none(), "the broker was killed mid-stream");
        acked
    });
    assert!(acked.len() >= 3000);

    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        let mut stored = vec![Vec::new(); 2];
        for (partition, records) in stored.iter_mut().enumerate() {
            let mut consumer =
                PartitionConsumer::new(client.clone(), "crash", PartitionId(partition as u32), StartPosition::Earliest);
            loop {
                let polled = consumer.poll(Duration::from_millis(100)).await.unwrap();
                if polled.is_empty() {
                    break;
                }
                records.extend(polled.into_iter().map(|r| (r.offset, r.value.unwrap().to_vec())));
            }
        }
        for records in &stored {
            for (i, (offset, _)) in records.iter().enumerate() {
                assert_eq!(*offset, Offset::new(i as u64).unwrap(), "offsets are contiguous from 0");
            }
        }
        for (seq, offset) in &acked {
            let records = &stored[(*seq % 2) as usize];
            let found = records.get(offset.get() as usize).map(|(_, value)| value.clone());
            assert_eq!(found, Some(format!("crash-{seq:06}").into_bytes()), "acked event {seq} at {offset}");
        }
    });
    drop(broker);
}

#[test]
fn the_cli_creates_topics_produces_and_consumes() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr.to_string();
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringbroker"));
        command.args(args).args(["--broker", &addr, "--log", "warn"]);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, out, _) = cli(&["topic", "create", "greetings", "--partitions", "2"], None);
    assert!(ok && out.contains("created topic greetings with 2 partitions"), "{out}");
    let (ok, _, err) =
        cli(&["produce", "greetings", "--partition", "1", "--key-separator", ":"], Some("a:hello\nb:world\n"));
    assert!(ok && err.contains("produced 2 events"), "{err}");
    let (ok, out, _) = cli(&["consume", "greetings", "--partition", "1", "--verbose", "--max-events", "2"], None);
    assert!(ok, "{out}");
    assert_eq!(out, "0\ta\thello\n1\tb\tworld\n");
    let (ok, out, _) = cli(&["topic", "describe", "greetings"], None);
    assert!(ok && out.contains("1\t1\t0\t2"), "partition 1 on shard 1 holds offsets 0..2: {out}");
    let (ok, _, err) = cli(&["topic", "create", "greetings"], None);
    assert!(!ok && err.lines().count() == 1 && err.contains("exists"), "one clear line: {err}");
    let (ok, out, _) = cli(&["stats"], None);
    assert!(ok && out.contains("shard 1") && out.contains("events_in"), "{out}");
    assert!(broker.terminate().success());
}

/// Encodes a request frame by hand.
fn frame(request_id: u32, request: &Request, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_frame(&mut out, FrameKind::Request, request_id, request, payload).unwrap();
    out
}

/// Reads one response frame from a blocking socket.
fn read_response(stream: &mut StdTcpStream) -> std::io::Result<(u32, Response)> {
    read_response_with_payload(stream).map(|(request_id, response, _)| (request_id, response))
}

/// Reads one response frame and its payload from a blocking socket.
fn read_response_with_payload(stream: &mut StdTcpStream) -> std::io::Result<(u32, Response, BytesMut)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let len = wire::frame_len(prefix, 64 << 20).unwrap();
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let (head, header, payload) = wire::split_frame(BytesMut::from(&body[..])).unwrap();
    Ok((head.request_id, wire::decode_header(&header).unwrap(), payload))
}

fn expect_error(response: Response, code: ErrorCode) {
    match response {
        Response::Error(error) => assert_eq!(error.code, code, "{}", error.message),
        other => panic!("expected error {code}, got {other:?}"),
    }
}

#[test]
fn malformed_frames_are_answered_without_harm_to_other_connections() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut good = StdTcpStream::connect(broker.addr).unwrap();
    let mut bad = StdTcpStream::connect(broker.addr).unwrap();
    for stream in [&good, &bad] {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    good.write_all(&frame(1, &Request::Ping, &[])).unwrap();
    assert_eq!(read_response(&mut good).unwrap(), (1, Response::Pong));

    // A header that does not decode: an error, and the connection carries on.
    let mut garbage = frame(7, &Request::Ping, &[]);
    let header_at = 4 + wire::FRAME_HEAD_BYTES;
    garbage[header_at] = 0xEE;
    bad.write_all(&garbage).unwrap();
    let (id, response) = read_response(&mut bad).unwrap();
    assert_eq!(id, 7);
    expect_error(response, ErrorCode::INVALID_REQUEST);
    // A future protocol version: an error naming it.
    let mut future_version = frame(8, &Request::Ping, &[]);
    future_version[4] = 99;
    bad.write_all(&future_version).unwrap();
    let (id, response) = read_response(&mut bad).unwrap();
    assert_eq!(id, 8);
    expect_error(response, ErrorCode::UNSUPPORTED_VERSION);
    // Produce whose declared sizes do not match its payload.
    let produce = Request::Produce(wire::ProduceRequest {
        acks: AckLevel::Durable,
        timeout_ms: 1000,
        partitions: vec![wire::ProducePartition { topic: "x".into(), partition: PartitionId(0), batch_bytes: 100 }],
    });
    bad.write_all(&frame(9, &produce, b"short")).unwrap();
    expect_error(read_response(&mut bad).unwrap().1, ErrorCode::INVALID_REQUEST);
    bad.write_all(&frame(10, &Request::Ping, &[])).unwrap();
    assert_eq!(read_response(&mut bad).unwrap(), (10, Response::Pong));

    // A 4 GiB length prefix: refused before any allocation, then closed.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&frame(11, &Request::Ping, &[])[4..]);
    bad.write_all(&huge).unwrap();
    let (id, response) = read_response(&mut bad).unwrap();
    assert_eq!(id, 11);
    expect_error(response, ErrorCode::FRAME_TOO_LARGE);
    let mut rest = Vec::new();
    assert_eq!(bad.read_to_end(&mut rest).unwrap_or(0), 0, "the connection is closed after an unframeable length");

    // The other connection never noticed.
    good.write_all(&frame(2, &Request::Ping, &[])).unwrap();
    assert_eq!(read_response(&mut good).unwrap(), (2, Response::Pong));
    assert!(broker.terminate().success());
}

#[test]
fn slow_clients_are_cut_off_and_connections_beyond_the_limit_refused() {
    let dir = temp_dir();
    let tuning = dir.path().join("tight.toml");
    std::fs::write(&tuning, "[network]\nframe_timeout_ms = 300\nmax_connections_per_shard = 2\n").unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let shard0 = std::net::SocketAddr::new(broker.addr.ip(), broker.shard_ports[0]);

    // Slowloris: a frame started and fed a byte at a time is cut by the frame deadline.
    let mut slow = StdTcpStream::connect(shard0).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = frame(1, &Request::Ping, &[]);
    let started = Instant::now();
    let mut closed = false;
    for byte in &request {
        if slow.write_all(std::slice::from_ref(byte)).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    if !closed {
        let mut buf = [0u8; 64];
        closed = matches!(slow.read(&mut buf), Ok(0) | Err(_));
    }
    assert!(closed, "a frame trickling in a byte per 100 ms is cut off");
    drop(slow);
    // The shard must have noticed the closed connection before counting
    // again. Asked through shard 1's port, whose connections do not count.
    let shard1 = std::net::SocketAddr::new(broker.addr.ip(), broker.shard_ports[1]);
    broker.wait_until("shard 0 has no open connections", || broker.shard_counter(shard1, 0, "connections_open") == 0);

    // Two connections are served; a third to the same shard is told why
    // and closed (the two are not idle long enough to make room).
    let mut first = StdTcpStream::connect(shard0).unwrap();
    let mut second = StdTcpStream::connect(shard0).unwrap();
    for (id, stream) in [(1, &mut first), (2, &mut second)] {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(&frame(id, &Request::Ping, &[])).unwrap();
        assert_eq!(read_response(stream).unwrap(), (id, Response::Pong));
    }
    let mut third = StdTcpStream::connect(shard0).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = third.write_all(&frame(3, &Request::Ping, &[]));
    let notice = support::read_notice(&mut third);
    assert_eq!(notice.code, ErrorCode::CONNECTION_REFUSED);
    assert!(notice.message.contains("shard 0 is full"), "{}", notice.message);
    // The served ones still are.
    first.write_all(&frame(4, &Request::Ping, &[])).unwrap();
    assert_eq!(read_response(&mut first).unwrap(), (4, Response::Pong));
    assert!(broker.terminate().success());
}

#[test]
fn a_long_poll_holds_no_budget_its_connections_producers_need() {
    let dir = temp_dir();
    // 1 MiB per connection: two parked fetches of 1 MiB would each have held
    // half of it (the most one fetch may take) for as long as they waited.
    let tuning = dir.path().join("small-budget.toml");
    std::fs::write(&tuning, "[network]\ninflight_bytes_per_connection = 1048576\n").unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("mixed", PARTITIONS).await.unwrap();
        let metadata = client.metadata(None).await.unwrap();
        let owners: Vec<_> = metadata.topics[0].partitions.iter().map(|p| p.shard).collect();
        // Partitions 0 and 2 live on the same shard: consumers park on 0,
        // a producer writes to 2, all on one connection.
        assert_eq!(owners[0], owners[2]);
        let shard_addr = std::net::SocketAddr::new(addr.ip(), metadata.shards[owners[0].index()].port);
        let connection = ringbroker::client::Connection::connect(shard_addr, Duration::from_secs(5)).await.unwrap();
        let fetch = Request::Fetch(wire::FetchRequest {
            max_wait_ms: 20_000,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![wire::FetchPartition {
                topic: "mixed".into(),
                partition: PartitionId(0),
                offset: Offset::ZERO,
                max_bytes: 1 << 20,
            }],
        });
        let (sent, done) = (std::rc::Rc::new(std::cell::Cell::new(0)), std::rc::Rc::new(std::cell::Cell::new(0)));
        let parked: Vec<_> = (0..2)
            .map(|_| {
                let (connection, fetch) = (connection.clone(), fetch.clone());
                let (sent, done) = (std::rc::Rc::clone(&sent), std::rc::Rc::clone(&done));
                glommio::spawn_local(async move {
                    // The first poll of a call queues its frame, before this
                    // task lets another run.
                    sent.set(sent.get() + 1);
                    let answer = connection.call(&fetch, &[]).await.unwrap();
                    done.set(done.get() + 1);
                    answer
                })
            })
            .collect();
        // The fetches go out first; the ping's answer says the broker read them.
        while sent.get() < 2 {
            futures_lite::future::yield_now().await;
        }
        assert_eq!(connection.call(&Request::Ping, &[]).await.unwrap().0, Response::Pong);
        let produce = |partition: u32, batch: &[u8]| {
            Request::Produce(wire::ProduceRequest {
                acks: AckLevel::Durable,
                timeout_ms: 10_000,
                partitions: vec![wire::ProducePartition {
                    topic: "mixed".into(),
                    partition: PartitionId(partition),
                    batch_bytes: batch.len() as u32,
                }],
            })
        };
        let batch = support::batch(&[&[7u8; 300 << 10]]);
        let (response, _) = connection.call(&produce(2, &batch), &batch).await.unwrap();
        let Response::Produce(produced) = response else { panic!("expected a produce response: {response:?}") };
        assert_eq!(produced.partitions[0].error, ErrorCode::NONE);
        assert_eq!(done.get(), 0, "the produce was answered while both fetches were still parked");
        // Data for the parked fetches: they answer now, long before their wait.
        let small = support::batch(&[b"wake up"]);
        connection.call(&produce(0, &small), &small).await.unwrap();
        for fetch in parked {
            let (response, payload) = fetch.await;
            let Response::Fetch(fetched) = response else { panic!("expected a fetch response: {response:?}") };
            assert_eq!(fetched.partitions[0].error, ErrorCode::NONE);
            assert_eq!(payload.len(), small.len());
        }
    });
    assert!(broker.terminate().success());
}

#[test]
fn a_long_poll_waiting_for_more_data_leaves_the_shard_free() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("poll", 1).await.unwrap();
        client.produce_raw("poll", PartitionId(0), &support::batch(&[b"one"]), AckLevel::Durable).await.unwrap();
        // Some data is there, but less than min_bytes: the fetch parks.
        let owner = client.metadata(Some(vec!["poll".into()])).await.unwrap().topics[0].partitions[0].shard;
        let shard_addr =
            std::net::SocketAddr::new(addr.ip(), client.metadata(None).await.unwrap().shards[owner.index()].port);
        let connection = ringbroker::client::Connection::connect(shard_addr, Duration::from_secs(5)).await.unwrap();
        let fetch = Request::Fetch(wire::FetchRequest {
            max_wait_ms: 2_000,
            min_bytes: 1 << 20,
            max_bytes: 1 << 20,
            partitions: vec![wire::FetchPartition {
                topic: "poll".into(),
                partition: PartitionId(0),
                offset: Offset::ZERO,
                max_bytes: 1 << 20,
            }],
        });
        let done = std::rc::Rc::new(std::cell::Cell::new(false));
        let parked = glommio::spawn_local({
            let (connection, done) = (connection.clone(), std::rc::Rc::clone(&done));
            async move {
                let answer = connection.call(&fetch, &[]).await.unwrap();
                done.set(true);
                answer
            }
        });
        // The same shard answers other requests while the fetch waits.
        let other = ringbroker::client::Connection::connect(shard_addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(other.call(&Request::Ping, &[]).await.unwrap().0, Response::Pong);
        assert!(!done.get(), "the ping was answered while the fetch was still parked");
        client.produce_raw("poll", PartitionId(0), &support::batch(&[b"two"]), AckLevel::Durable).await.unwrap();
        assert_eq!(other.call(&Request::Ping, &[]).await.unwrap().0, Response::Pong);
        let (response, payload) = parked.await;
        let Response::Fetch(fetched) = response else { panic!("expected a fetch response") };
        assert_eq!(fetched.partitions[0].error, ErrorCode::NONE);
        assert_eq!(fetched.partitions[0].high_watermark, Offset::new(2).unwrap());
        assert_eq!(payload.len(), fetched.partitions[0].bytes as usize);
    });
    assert!(broker.terminate().success());
}
