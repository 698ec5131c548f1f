//! An idempotent producer under kill -9: batches are pipelined, the broker
//! is killed before their answers are read, restarted on the same data,
//! and every batch whose acknowledgement was not seen is sent again, in
//! order, as a Kafka producer retries. At the end every event is in the log
//! exactly once. The negative control does the same without a producer id
//! (idempotence off) and finds the retried events stored twice.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use ringbroker::client::decode_records;
use ringbroker::protocol::batch::{BatchBuilder, BatchOptions, Record, NO_PRODUCER_ID};
use ringbroker::protocol::types::Offset;
use support::broker::BrokerProcess;
use support::kafka::{text, KafkaConnection};
use support::temp_dir;

const TOPIC: &str = "ledger";
const CYCLES: usize = 3;
const BATCHES_PER_CYCLE: i32 = 24;
const RECORDS_PER_BATCH: i32 = 10;
/// Unanswered requests at once: Kafka's idempotent producers keep at most
/// 5 per partition, which is what the broker remembers.
const IN_FLIGHT: usize = 5;

/// Batch `index` of the run: records `index * RECORDS_PER_BATCH ..`, whose
/// values name themselves; `producer` -1 sends it without idempotence.
fn produce_request(producer: i64, index: i32) -> ProduceRequest {
    let mut out = Vec::new();
    let options = BatchOptions {
        producer_id: producer,
        producer_epoch: if producer == NO_PRODUCER_ID { -1 } else { 0 },
        base_sequence: if producer == NO_PRODUCER_ID { -1 } else { index * RECORDS_PER_BATCH },
        ..BatchOptions::default()
    };
    let mut builder = BatchBuilder::with_options(&mut out, 1_764_000_000_000, options);
    for record in 0..RECORDS_PER_BATCH {
        let value = format!("event {}", index * RECORDS_PER_BATCH + record);
        builder.push(&Record {
            timestamp_ms: 1_764_000_000_000,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
        });
    }
    ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![
        kafka_protocol::messages::produce_request::TopicProduceData::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partition_data(vec![kafka_protocol::messages::produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::copy_from_slice(builder.finish())))]),
    ])
}

/// A connection to the shard that leads the topic's partition 0.
fn leader(broker: &BrokerProcess) -> KafkaConnection {
    KafkaConnection::open(KafkaConnection::open(broker.kafka_addr.unwrap()).leader_of(TOPIC))
}

/// The partition's durable end (ListOffsets latest answers it).
fn durable_end(owner: &mut KafkaConnection) -> i64 {
    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
        kafka_protocol::messages::list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partitions(vec![kafka_protocol::messages::list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)]),
    ]);
    let ResponseKind::ListOffsets(listed) = owner.call(ApiKey::ListOffsets, 7, &request) else { panic!() };
    listed.topics[0].partitions[0].offset
}

/// Waits until the partition's durable end reaches `end`.
fn wait_until_durable(owner: &mut KafkaConnection, end: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if durable_end(owner) >= end {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "offset {end} never became durable");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn produced_error(response: ResponseKind) -> i16 {
    let ResponseKind::Produce(produced) = response else { panic!() };
    produced.responses[0].partition_responses[0].error_code
}

/// Runs the kill -9 cycles; returns how often each event is in the log.
fn run_cycles(idempotent: bool) -> BTreeMap<String, usize> {
    let dir = temp_dir();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut connection = KafkaConnection::open(broker.kafka_addr.unwrap());
    connection.create_topic(TOPIC, 1);
    let producer = if idempotent {
        let init = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
        let ResponseKind::InitProducerId(init) = connection.call(ApiKey::InitProducerId, 4, &init) else { panic!() };
        assert_eq!(init.error_code, 0);
        init.producer_id.0
    } else {
        NO_PRODUCER_ID
    };
    let mut next_batch = 0;
    for cycle in 0..CYCLES {
        let mut owner = leader(&broker);
        // Everything sent so far is acknowledged, so durable: the log's end.
        let cycle_start_end = durable_end(&mut owner);
        // Pipeline a cycle's batches with at most IN_FLIGHT unanswered, as a
        // Kafka idempotent producer does; the last IN_FLIGHT stay
        // unanswered. Give the broker a moment to make them durable, and
        // kill it.
        let first = next_batch;
        let mut in_flight = std::collections::VecDeque::new();
        for index in first..first + BATCHES_PER_CYCLE {
            if in_flight.len() == IN_FLIGHT {
                let (_, correlation) = in_flight.pop_front().unwrap();
                assert_eq!(produced_error(owner.receive(ApiKey::Produce, 9, correlation).unwrap()), 0);
            }
            in_flight.push_back((index, owner.send(ApiKey::Produce, 9, &produce_request(producer, index))));
        }
        let unacknowledged: Vec<i32> = in_flight.into_iter().map(|(index, _)| index).collect();
        // In two cycles of three, wait until everything sent is durable,
        // so every retry finds its batch stored; in the middle one, kill at
        // once, so some retries find theirs and some do not.
        if cycle != 1 {
            let end = cycle_start_end + i64::from(BATCHES_PER_CYCLE * RECORDS_PER_BATCH);
            // On a connection of its own: the producer's has answers pending.
            wait_until_durable(&mut leader(&broker), end);
        }
        broker.kill9();
        broker = BrokerProcess::start(dir.path(), &[]);
        // Every send whose ack was not seen goes again, in order.
        let mut owner = leader(&broker);
        for index in unacknowledged {
            let response = owner.call(ApiKey::Produce, 9, &produce_request(producer, index));
            assert_eq!(produced_error(response), 0, "batch {index} after the restart");
        }
        next_batch = first + BATCHES_PER_CYCLE;
    }
    // Read everything back.
    let mut owner = leader(&broker);
    let mut counts = BTreeMap::new();
    let mut offset = 0i64;
    loop {
        let fetch = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(TopicName(text(TOPIC)))
                .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)]),
        ]);
        let ResponseKind::Fetch(fetched) = owner.call(ApiKey::Fetch, 12, &fetch) else { panic!() };
        let partition = &fetched.responses[0].partitions[0];
        let payload = partition.records.clone().unwrap_or_default();
        let mut records = Vec::new();
        let next = decode_records(&payload, Offset::new(offset as u64).unwrap(), &mut records).unwrap();
        for record in records {
            *counts.entry(String::from_utf8(record.value.unwrap().to_vec()).unwrap()).or_insert(0) += 1;
        }
        match next {
            Some(next) if (next.get() as i64) < partition.high_watermark => offset = next.get() as i64,
            _ => break,
        }
    }
    assert!(broker.terminate().success());
    counts
}

#[test]
fn an_idempotent_producer_retrying_across_kill_9_stores_every_event_once() {
    let counts = run_cycles(true);
    let total = (CYCLES as i32 * BATCHES_PER_CYCLE * RECORDS_PER_BATCH) as usize;
    assert_eq!(counts.len(), total, "every event is there");
    let duplicated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicated.is_empty(), "{} events stored twice: {duplicated:?}", duplicated.len());
}

/// The negative control: the same run without a producer id stores the
/// retried events that had made it to disk before the kill a second time.
#[test]
fn without_idempotence_the_same_retries_store_events_twice() {
    let counts = run_cycles(false);
    let total = (CYCLES as i32 * BATCHES_PER_CYCLE * RECORDS_PER_BATCH) as usize;
    assert_eq!(counts.len(), total, "every event is there");
    let duplicated = counts.values().filter(|count| **count > 1).count();
    // Two cycles waited for their 5 unanswered batches to be durable: at
    // least their 100 events come twice.
    assert!(duplicated >= 2 * IN_FLIGHT * RECORDS_PER_BATCH as usize, "{duplicated} events stored twice");
    println!("negative control: {duplicated} of {total} events stored twice");
}

/// The native client's idempotent producer: records sent while the broker
/// is killed with kill -9 and restarted (twice) are retried by the producer
/// until they land, and each is in the log exactly once. The broker keeps
/// its address across restarts (no shard ports, so everything goes through
/// it).
#[test]
fn the_native_idempotent_producer_retries_through_kill_9_and_stores_each_record_once() {
    use ringbroker::client::{Client, ClientOptions, Producer, ProducerConfig, ProducerRecord};
    use ringbroker::protocol::types::{AckLevel, PartitionId};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use support::broker::Started;

    const RECORDS: usize = 6_000;
    let dir = temp_dir();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--shard-ports",
        "none",
        "--cpus",
        "0,1",
        "--no-kafka",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let start = || match BrokerProcess::start_with(&data, &args) {
        Started::Serving(broker) => broker,
        Started::Failed { stderr, .. } => panic!("the broker did not start: {stderr}"),
    };
    let mut broker = start();
    let addr = broker.addr;
    let sent = Arc::new(AtomicUsize::new(0));
    let progress = Arc::clone(&sent);
    let producer_thread = std::thread::spawn(move || {
        support::run(move || async move {
            let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
            client.create_topic(TOPIC, 2).await.unwrap();
            let config = ProducerConfig {
                idempotent: true,
                batch_bytes: 2048,
                acks: AckLevel::Durable,
                delivery_timeout: Duration::from_secs(60),
                ..ProducerConfig::default()
            };
            let producer = Producer::new(client.clone(), config).unwrap();
            let mut futures = Vec::new();
            for index in 0..RECORDS {
                let value = format!("event {index}");
                let partition = PartitionId((index % 2) as u32);
                let record = ProducerRecord::new(TOPIC, value.as_bytes()).with_partition(partition);
                futures.push(producer.send(record).await.unwrap());
                progress.store(index + 1, Ordering::SeqCst);
                if index % 50 == 0 {
                    // A steady pace, so the kills land mid-stream.
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
            producer.flush().await;
            let mut failures = Vec::new();
            for future in futures {
                if let Err(error) = future.await {
                    failures.push(error.to_string());
                }
            }
            failures
        })
    });
    for kill_after in [RECORDS / 3, 2 * RECORDS / 3] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while sent.load(std::sync::atomic::Ordering::SeqCst) < kill_after {
            assert!(!producer_thread.is_finished(), "the producer stopped early");
            assert!(std::time::Instant::now() < deadline, "the producer stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        broker.kill9();
        // Down for a while: the producer's sends fail and are retried.
        std::thread::sleep(Duration::from_millis(200));
        broker = start();
    }
    let failures = producer_thread.join().unwrap();
    assert!(failures.is_empty(), "every send delivered: {failures:?}");
    // Read both partitions back.
    let counts = support::run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for partition in 0..2 {
            let mut offset = Offset::ZERO;
            loop {
                let (result, payload) = client.fetch(TOPIC, PartitionId(partition), offset, 1 << 20, 0).await.unwrap();
                let mut records = Vec::new();
                let next = decode_records(&payload, offset, &mut records).unwrap();
                for record in records {
                    *counts.entry(String::from_utf8(record.value.unwrap().to_vec()).unwrap()).or_insert(0) += 1;
                }
                match next {
                    Some(next) if next < result.high_watermark => offset = next,
                    _ => break,
                }
            }
        }
        counts
    });
    assert!(broker.terminate().success());
    assert_eq!(counts.len(), RECORDS, "every record is there");
    let duplicated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicated.is_empty(), "stored twice: {duplicated:?}");
}
