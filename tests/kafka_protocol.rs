//! The Kafka API at the byte level, against the real binary: every served
//! API at its lowest and highest version through the real listener, and
//! malformed requests (truncated, impossible lengths, an unknown API, a
//! 2 GiB length) that get a closed connection while nothing else is
//! disturbed. Requests are built and responses read with `kafka-protocol`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Encodable;
use support::broker::BrokerProcess;
use support::kafka::{text, KafkaConnection};
use support::temp_dir;

use kafka_protocol::protocol::Decodable;

fn batch(values: &[&[u8]]) -> Bytes {
    let mut out = Vec::new();
    let mut builder = ringbroker::protocol::batch::BatchBuilder::new(&mut out, 1_764_000_000_000);
    for value in values {
        builder.push(&ringbroker::protocol::batch::Record {
            timestamp_ms: 1_764_000_000_000,
            key: None,
            value: Some(value),
            headers: &[],
        });
    }
    Bytes::copy_from_slice(builder.finish())
}

fn versions(connection: &mut KafkaConnection) -> Vec<(i16, i16, i16)> {
    let ResponseKind::ApiVersions(response) = connection.call(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default().with_client_software_name(text("test")).with_client_software_version(text("1")),
    ) else {
        panic!("ApiVersions")
    };
    assert_eq!(response.error_code, 0);
    response.api_keys.iter().map(|key| (key.api_key, key.min_version, key.max_version)).collect()
}

fn range(table: &[(i16, i16, i16)], api_key: ApiKey) -> [i16; 2] {
    let (_, min, max) = table.iter().find(|(key, ..)| *key == api_key as i16).expect("advertised");
    [*min, *max]
}

#[test]
fn every_served_api_answers_at_its_lowest_and_highest_version() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &["--tuning", "tuning/default.toml"][..0]);
    let bootstrap = broker.kafka_addr.unwrap();
    let mut connection = KafkaConnection::open(bootstrap);
    let table = versions(&mut connection);
    // InitProducerId: a new producer at each end of the range, an epoch
    // bump for one that names itself (v3+), no transactions.
    let mut producer_ids = Vec::new();
    for version in range(&table, ApiKey::InitProducerId) {
        let request = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
        let ResponseKind::InitProducerId(init) = connection.call(ApiKey::InitProducerId, version, &request) else {
            panic!()
        };
        assert_eq!((init.error_code, init.producer_epoch), (0, 0), "v{version}");
        assert!(init.producer_id.0 >= 0);
        producer_ids.push(init.producer_id.0);
        if version >= 3 {
            let again = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(init.producer_id)
                .with_producer_epoch(0);
            let ResponseKind::InitProducerId(bumped) = connection.call(ApiKey::InitProducerId, version, &again) else {
                panic!()
            };
            assert_eq!((bumped.error_code, bumped.producer_id, bumped.producer_epoch), (0, init.producer_id, 1));
        }
        let transactional = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(text("tx"))))
            .with_transaction_timeout_ms(60_000);
        let ResponseKind::InitProducerId(refused) = connection.call(ApiKey::InitProducerId, version, &transactional)
        else {
            panic!()
        };
        assert_eq!(refused.error_code, 15, "no transactions: COORDINATOR_NOT_AVAILABLE");
    }
    assert_ne!(producer_ids[0], producer_ids[1], "every producer gets its own id");

    for version in range(&table, ApiKey::CreateTopics) {
        let topic = format!("created-v{version}");
        let request = CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                .with_name(TopicName(text(&topic)))
                .with_num_partitions(2)
                .with_replication_factor(1),
        ]);
        let ResponseKind::CreateTopics(created) = connection.call(ApiKey::CreateTopics, version, &request) else {
            panic!()
        };
        assert_eq!(created.topics[0].error_code, 0, "v{version}");
    }
    for version in range(&table, ApiKey::Metadata) {
        let topics = if version == 0 { Some(vec![]) } else { None };
        let request = MetadataRequest::default().with_topics(topics);
        let ResponseKind::Metadata(metadata) = connection.call(ApiKey::Metadata, version, &request) else { panic!() };
        assert_eq!(metadata.brokers.len(), 2, "v{version}: one broker per shard");
        let created = metadata.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "created-v2"));
        assert_eq!(created.map(|t| t.partitions.len()), Some(2), "v{version}");
    }
    // Produce and fetch partition 0 of a topic, at each end of the ranges,
    // on the shard that leads it (shard 0's own port).
    let ResponseKind::Metadata(metadata) =
        connection.call(ApiKey::Metadata, 1, &MetadataRequest::default().with_topics(None))
    else {
        panic!()
    };
    let leader = &metadata.brokers.iter().find(|b| b.node_id.0 == 0).unwrap();
    let mut owner = KafkaConnection::open(SocketAddr::from(([127, 0, 0, 1], leader.port as u16)));
    let mut next_offset = 0;
    // Produce is advertised from v0 so librdkafka compresses, but served
    // from v3 (magic 2 batches only); v0-v2 requests close the connection
    // (see malformed_kafka_requests_close_only_their_connection).
    let [advertised_min, produce_max] = range(&table, ApiKey::Produce);
    assert_eq!(advertised_min, 0);
    for version in [3, produce_max] {
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(TopicName(text("created-v2")))
                .with_partition_data(vec![kafka_protocol::messages::produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch(&[b"a", b"b"])))]),
        ]);
        let ResponseKind::Produce(produced) = owner.call(ApiKey::Produce, version, &request) else { panic!() };
        let partition = &produced.responses[0].partition_responses[0];
        assert_eq!((partition.error_code, partition.base_offset), (0, next_offset), "v{version}");
        next_offset += 2;
    }
    for version in range(&table, ApiKey::Fetch) {
        let request = FetchRequest::default().with_max_wait_ms(100).with_max_bytes(1 << 20).with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(TopicName(text("created-v2")))
                .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)]),
        ]);
        let ResponseKind::Fetch(fetched) = owner.call(ApiKey::Fetch, version, &request) else { panic!() };
        let partition = &fetched.responses[0].partitions[0];
        assert_eq!((partition.error_code, partition.high_watermark), (0, next_offset), "v{version}");
        assert!(partition.records.as_ref().is_some_and(|records| !records.is_empty()), "v{version}");
    }
    for version in range(&table, ApiKey::ListOffsets) {
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
            kafka_protocol::messages::list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(text("created-v2")))
                .with_partitions(vec![kafka_protocol::messages::list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)]),
        ]);
        let ResponseKind::ListOffsets(listed) = owner.call(ApiKey::ListOffsets, version, &request) else { panic!() };
        assert_eq!(listed.topics[0].partitions[0].offset, next_offset, "v{version}");
    }
    for version in range(&table, ApiKey::FindCoordinator) {
        let request = if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![text("g")])
        } else {
            FindCoordinatorRequest::default().with_key(text("g"))
        };
        let ResponseKind::FindCoordinator(found) = connection.call(ApiKey::FindCoordinator, version, &request) else {
            panic!()
        };
        let (error, port) = match found.coordinators.first() {
            Some(coordinator) => (coordinator.error_code, coordinator.port),
            None => (found.error_code, found.port),
        };
        assert_eq!(error, 0, "v{version}");
        assert!(metadata.brokers.iter().any(|b| b.port == port), "v{version}: a shard's port");
    }
    // Offsets outside group management (generation -1).
    for version in range(&table, ApiKey::OffsetCommit) {
        let group = format!("simple-v{version}");
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(text(&group)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(text("created-v2")))
                .with_partitions(vec![
                    kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(3),
                ])]);
        let ResponseKind::OffsetCommit(committed) = connection.call(ApiKey::OffsetCommit, version, &request) else {
            panic!()
        };
        assert_eq!(committed.topics[0].partitions[0].error_code, 0, "v{version}");
    }
    for version in range(&table, ApiKey::OffsetFetch) {
        let group = GroupId(text("simple-v2"));
        let topics = vec![kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(TopicName(text("created-v2")))
            .with_partition_indexes(vec![0])];
        let request = if version >= 8 {
            OffsetFetchRequest::default().with_groups(vec![
                kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(group)
                    .with_topics(Some(vec![
                        kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(TopicName(text("created-v2")))
                            .with_partition_indexes(vec![0]),
                    ])),
            ])
        } else {
            OffsetFetchRequest::default().with_group_id(group).with_topics(Some(topics))
        };
        let ResponseKind::OffsetFetch(fetched) = connection.call(ApiKey::OffsetFetch, version, &request) else {
            panic!()
        };
        let offset = match fetched.groups.first() {
            Some(group) => group.topics[0].partitions[0].committed_offset,
            None => fetched.topics[0].partitions[0].committed_offset,
        };
        assert_eq!(offset, 3, "v{version}");
    }
    // A one-member group through join, sync, heartbeat and leave, at each
    // end of the ranges (a member id first, from v4 on).
    for (round, version) in range(&table, ApiKey::JoinGroup).into_iter().enumerate() {
        let group = GroupId(text(&format!("classic-{round}")));
        let find = FindCoordinatorRequest::default().with_key(text(&group.0));
        let ResponseKind::FindCoordinator(found) = connection.call(ApiKey::FindCoordinator, 0, &find) else { panic!() };
        let mut coordinator = KafkaConnection::open(SocketAddr::from(([127, 0, 0, 1], found.port as u16)));
        let join = |member: &str| {
            JoinGroupRequest::default()
                .with_group_id(group.clone())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if version >= 1 { 10_000 } else { -1 })
                .with_member_id(text(member))
                .with_protocol_type(text("consumer"))
                .with_protocols(vec![kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(text("range"))
                    .with_metadata(Bytes::from_static(b"meta"))])
        };
        let ResponseKind::JoinGroup(mut joined) = coordinator.call(ApiKey::JoinGroup, version, &join("")) else {
            panic!()
        };
        if version >= 4 {
            assert_eq!(joined.error_code, 79, "MEMBER_ID_REQUIRED at v{version}");
            let member = joined.member_id.to_string();
            let ResponseKind::JoinGroup(again) = coordinator.call(ApiKey::JoinGroup, version, &join(&member)) else {
                panic!()
            };
            joined = again;
        }
        assert_eq!((joined.error_code, joined.generation_id), (0, 1), "v{version}");
        assert_eq!(joined.leader, joined.member_id, "the only member leads");
        assert_eq!(joined.members.len(), 1);
        let member = joined.member_id.clone();
        let sync_version = range(&table, ApiKey::SyncGroup)[round];
        let mut sync = SyncGroupRequest::default()
            .with_group_id(group.clone())
            .with_generation_id(1)
            .with_member_id(member.clone())
            .with_assignments(vec![kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment::default(
            )
            .with_member_id(member.clone())
            .with_assignment(Bytes::from_static(b"assigned"))]);
        if sync_version >= 5 {
            sync = sync.with_protocol_type(Some(text("consumer"))).with_protocol_name(Some(text("range")));
        }
        let ResponseKind::SyncGroup(synced) = coordinator.call(ApiKey::SyncGroup, sync_version, &sync) else {
            panic!()
        };
        assert_eq!((synced.error_code, &synced.assignment[..]), (0, &b"assigned"[..]), "v{sync_version}");
        let heartbeat_version = range(&table, ApiKey::Heartbeat)[round];
        let beat = HeartbeatRequest::default()
            .with_group_id(group.clone())
            .with_generation_id(1)
            .with_member_id(member.clone());
        let ResponseKind::Heartbeat(beaten) = coordinator.call(ApiKey::Heartbeat, heartbeat_version, &beat) else {
            panic!()
        };
        assert_eq!(beaten.error_code, 0);
        for describe_version in range(&table, ApiKey::DescribeGroups) {
            let request = DescribeGroupsRequest::default().with_groups(vec![group.clone()]);
            let ResponseKind::DescribeGroups(described) =
                connection.call(ApiKey::DescribeGroups, describe_version, &request)
            else {
                panic!()
            };
            assert_eq!(described.groups[0].group_state.as_str(), "Stable", "v{describe_version}");
            assert_eq!(described.groups[0].members.len(), 1);
        }
        for list_version in range(&table, ApiKey::ListGroups) {
            let ResponseKind::ListGroups(listed) =
                connection.call(ApiKey::ListGroups, list_version, &ListGroupsRequest::default())
            else {
                panic!()
            };
            assert!(listed.groups.iter().any(|listed| listed.group_id == group), "v{list_version}");
        }
        let leave_version = range(&table, ApiKey::LeaveGroup)[round];
        let leave = if leave_version >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(group.clone())
                .with_members(vec![kafka_protocol::messages::leave_group_request::MemberIdentity::default()
                    .with_member_id(member.clone())])
        } else {
            LeaveGroupRequest::default().with_group_id(group.clone()).with_member_id(member.clone())
        };
        let ResponseKind::LeaveGroup(left) = coordinator.call(ApiKey::LeaveGroup, leave_version, &leave) else {
            panic!()
        };
        let error = left.members.first().map_or(left.error_code, |member| member.error_code);
        assert_eq!(error, 0, "v{leave_version}");
    }
    for version in range(&table, ApiKey::DeleteTopics) {
        let request = DeleteTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topic_names(vec![TopicName(text(&format!("created-v{}", [2, 5][(version >= 4) as usize])))]);
        let ResponseKind::DeleteTopics(deleted) = connection.call(ApiKey::DeleteTopics, version, &request) else {
            panic!()
        };
        assert_eq!(deleted.responses[0].error_code, 0, "v{version}");
    }
    assert!(broker.terminate().success());
}

/// A request frame by hand: header v1 (client id "t"), then `body`.
fn raw_frame(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes());
    frame.extend_from_slice(&[0, 1, b't']);
    frame.extend_from_slice(body);
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

#[test]
fn malformed_kafka_requests_close_only_their_connection() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let bootstrap = broker.kafka_addr.unwrap();
    let mut good = KafkaConnection::open(bootstrap);
    versions(&mut good);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Produce v3: null transactional id, acks, timeout, then 2^31 - 1 topics.
        ("an impossible array count", raw_frame(0, 3, &[0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0x7f, 0xff, 0xff, 0xff])),
        ("a truncated body", raw_frame(0, 3, &[0xff, 0xff, 0, 1, 0])),
        ("an unknown API key", raw_frame(999, 0, &[])),
        ("an unserved version", raw_frame(0, 1, &[])),
        ("a header cut short", vec![0, 0, 0, 3, 0, 18, 0]),
        ("a 2 GiB length", vec![0x7f, 0xff, 0xff, 0xff, 0, 18, 0, 3]),
    ];
    for (what, frame) in cases {
        let mut bad = KafkaConnection::open(bootstrap);
        bad.send_raw(&frame);
        assert!(bad.is_closed(), "{what}: the connection is closed");
        // The well-behaved connection never noticed.
        versions(&mut good);
    }
    // An ApiVersions version the broker does not know gets a v0 answer
    // with error 35 and the table, so the client can pick another.
    let mut newer = KafkaConnection::open(bootstrap);
    // (Its header is the flexible kind, as for every ApiVersions from v3:
    // the tagged-fields byte after the client id.)
    newer.send_raw(&raw_frame(18, 99, &[0]));
    let mut response = newer.read_frame().unwrap();
    let header = ResponseHeader::decode(&mut response, 0).unwrap();
    assert_eq!(header.correlation_id, 7);
    let answer = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(answer.error_code, 35);
    assert!(answer.api_keys.iter().any(|key| key.api_key == ApiKey::Produce as i16));
    assert!(broker.terminate().success());
}

/// The broker's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the broker's /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

/// A client that pipelines fetches and never reads the answers must not
/// make the broker build them all: each fetch's response bytes are held
/// against the connection's budget (8 MiB by default) before it is served,
/// so at most a couple of 4 MiB answers exist at once, not 128.
#[test]
fn pipelined_fetches_of_a_reader_that_stalls_hold_only_their_budget() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut connection = KafkaConnection::open(broker.kafka_addr.unwrap());
    connection.create_topic("hoard", 1);
    let ResponseKind::Metadata(metadata) =
        connection.call(ApiKey::Metadata, 1, &MetadataRequest::default().with_topics(None))
    else {
        panic!()
    };
    let leader = metadata.brokers.iter().find(|b| b.node_id.0 == 0).unwrap().port as u16;
    let leader = SocketAddr::from(([127, 0, 0, 1], leader));
    // 4 MiB in the partition: four batches of 1,000 values of 1 KiB.
    let mut owner = KafkaConnection::open(leader);
    let value = vec![b'x'; 1024];
    for _ in 0..4 {
        let values: Vec<&[u8]> = (0..1000).map(|_| &value[..]).collect();
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(TopicName(text("hoard")))
                .with_partition_data(vec![kafka_protocol::messages::produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch(&values)))]),
        ]);
        let ResponseKind::Produce(produced) = owner.call(ApiKey::Produce, 7, &request) else { panic!() };
        assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    }
    let before = rss_bytes(broker.pid());
    // 128 fetches of everything, written at once, answers never read.
    let fetch = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(4 << 20).with_topics(vec![
        kafka_protocol::messages::fetch_request::FetchTopic::default()
            .with_topic(TopicName(text("hoard")))
            .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(4 << 20)]),
    ]);
    let mut frames = Vec::new();
    for correlation in 0..128 {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(4)
            .with_correlation_id(correlation);
        let mut body = BytesMut::new();
        header.encode(&mut body, ApiKey::Fetch.request_header_version(4)).unwrap();
        fetch.encode(&mut body, 4).unwrap();
        frames.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frames.extend_from_slice(&body);
    }
    let mut hoarder = KafkaConnection::open(leader);
    hoarder.send_raw(&frames);
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss_bytes(broker.pid()).saturating_sub(before);
    println!("the broker grew by {} MiB", grown >> 20);
    assert!(grown < 128 << 20, "the broker grew by {} MiB for one stalled reader", grown >> 20);
    // Everyone else is still served meanwhile.
    let ResponseKind::Metadata(again) =
        connection.call(ApiKey::Metadata, 1, &MetadataRequest::default().with_topics(None))
    else {
        panic!()
    };
    assert_eq!(again.brokers.len(), 2);
    drop(hoarder);
    assert!(broker.terminate().success());
}

/// Kafka answers a connection's requests in order, so a response that is
/// ready waits for every earlier one. A long-poll fetch followed by large
/// produces on the same connection (what librdkafka and loadgen do) must
/// not wait for budget that those later produces hold until their own
/// answers go out: that deadlocked (seen with `loadgen --protocol kafka`).
#[test]
fn a_fetch_answered_in_order_never_waits_for_budget_later_requests_hold() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut connection = KafkaConnection::open(broker.kafka_addr.unwrap());
    connection.create_topic("ordered", 1);
    let ResponseKind::Metadata(metadata) =
        connection.call(ApiKey::Metadata, 1, &MetadataRequest::default().with_topics(None))
    else {
        panic!()
    };
    let leader = metadata.brokers.iter().find(|b| b.node_id.0 == 0).unwrap().port as u16;
    let frame = |correlation: i32, api_key: ApiKey, version: i16, request: &dyn Fn(&mut BytesMut)| {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation);
        let mut body = BytesMut::new();
        header.encode(&mut body, api_key.request_header_version(version)).unwrap();
        request(&mut body);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    // A long-poll at the end of the empty partition, asking for half the
    // 8 MiB connection budget...
    let fetch = FetchRequest::default().with_max_wait_ms(2000).with_max_bytes(4 << 20).with_topics(vec![
        kafka_protocol::messages::fetch_request::FetchTopic::default()
            .with_topic(TopicName(text("ordered")))
            .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(4 << 20)]),
    ]);
    let mut frames = frame(1, ApiKey::Fetch, 4, &|body| fetch.encode(body, 4).unwrap());
    // ...then six produces of 1 MB: 6 MB of the budget, and data for it.
    let value = vec![b'y'; 1000];
    let values: Vec<&[u8]> = (0..1000).map(|_| &value[..]).collect();
    let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
        kafka_protocol::messages::produce_request::TopicProduceData::default()
            .with_name(TopicName(text("ordered")))
            .with_partition_data(vec![kafka_protocol::messages::produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch(&values)))]),
    ]);
    for correlation in 2..8 {
        frames.extend(frame(correlation, ApiKey::Produce, 7, &|body| produce.encode(body, 7).unwrap()));
    }
    let mut owner = KafkaConnection::open(SocketAddr::from(([127, 0, 0, 1], leader)));
    owner.send_raw(&frames);
    for correlation in 1..8 {
        let (api_key, version) = if correlation == 1 { (ApiKey::Fetch, 4) } else { (ApiKey::Produce, 7) };
        let mut response =
            owner.read_frame().unwrap_or_else(|error| panic!("no answer to request {correlation}: {error}"));
        let header = ResponseHeader::decode(&mut response, api_key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation, "answers come in request order");
        if let ResponseKind::Produce(produced) = ResponseKind::decode(api_key, &mut response, version).unwrap() {
            assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
        }
    }
    assert!(broker.terminate().success());
}

/// The other half of the same rule: fetches reserve their response bytes
/// in request order. A long-poll on an empty partition followed by fetches
/// of a full one must not let the later fetches take the whole connection
/// budget while their answers wait behind the long-poll's.
#[test]
fn fetches_reserve_their_answers_in_request_order() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut connection = KafkaConnection::open(broker.kafka_addr.unwrap());
    connection.create_topic("turns", 4);
    let ResponseKind::Metadata(metadata) =
        connection.call(ApiKey::Metadata, 1, &MetadataRequest::default().with_topics(None))
    else {
        panic!()
    };
    // Two partitions of one shard: one stays empty, one gets data.
    let topic = metadata.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "turns")).unwrap();
    let leader = topic.partitions.iter().find(|p| p.partition_index == 0).unwrap().leader_id;
    let mut same_shard = topic.partitions.iter().filter(|p| p.leader_id == leader).map(|p| p.partition_index);
    let (empty, full) = (same_shard.next().unwrap(), same_shard.next().expect("two partitions on one shard"));
    let port = metadata.brokers.iter().find(|b| b.node_id == leader).unwrap().port as u16;
    let shard = SocketAddr::from(([127, 0, 0, 1], port));
    let produce = |partition: i32| {
        let value = [b'z'; 100];
        let values: Vec<&[u8]> = (0..10).map(|_| &value[..]).collect();
        ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(TopicName(text("turns")))
                .with_partition_data(vec![kafka_protocol::messages::produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch(&values)))]),
        ])
    };
    // A fetch reserves what it may return (4 MiB here), whatever is there.
    let mut owner = KafkaConnection::open(shard);
    let ResponseKind::Produce(produced) = owner.call(ApiKey::Produce, 7, &produce(full)) else { panic!() };
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    let fetch = |partition: i32, wait_ms: i32| {
        FetchRequest::default().with_max_wait_ms(wait_ms).with_max_bytes(4 << 20).with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(TopicName(text("turns")))
                .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(4 << 20)]),
        ])
    };
    let mut frames = Vec::new();
    for (correlation, request) in [(1, fetch(empty, 3000)), (2, fetch(full, 0)), (3, fetch(full, 0))] {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(4)
            .with_correlation_id(correlation);
        let mut body = BytesMut::new();
        header.encode(&mut body, ApiKey::Fetch.request_header_version(4)).unwrap();
        request.encode(&mut body, 4).unwrap();
        frames.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frames.extend_from_slice(&body);
    }
    let mut fetcher = KafkaConnection::open(shard);
    fetcher.send_raw(&frames);
    // Data for the long-poll arrives while the later fetches wait.
    std::thread::sleep(Duration::from_millis(300));
    let ResponseKind::Produce(produced) = owner.call(ApiKey::Produce, 7, &produce(empty)) else { panic!() };
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    for correlation in 1..=3 {
        let mut response =
            fetcher.read_frame().unwrap_or_else(|error| panic!("no answer to fetch {correlation}: {error}"));
        let header = ResponseHeader::decode(&mut response, ApiKey::Fetch.response_header_version(4)).unwrap();
        assert_eq!(header.correlation_id, correlation);
        let ResponseKind::Fetch(fetched) = ResponseKind::decode(ApiKey::Fetch, &mut response, 4).unwrap() else {
            panic!()
        };
        let records = fetched.responses[0].partitions[0].records.as_ref().map_or(0, |records| records.len());
        assert!(records > 0, "fetch {correlation} returned records");
    }
    assert!(broker.terminate().success());
}

/// Joins `group` at JoinGroup v5 (asking for a member id first when
/// `member` is empty) and returns the answer.
fn join_v5(connection: &mut KafkaConnection, group: &str, member: &str) -> JoinGroupResponse {
    let join = |member: &str| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(text(member))
            .with_protocol_type(text("consumer"))
            .with_protocols(vec![kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                .with_name(text("range"))
                .with_metadata(Bytes::from_static(b"meta"))])
    };
    let ResponseKind::JoinGroup(mut joined) = connection.call(ApiKey::JoinGroup, 5, &join(member)) else { panic!() };
    if joined.error_code == 79 {
        let member = joined.member_id.to_string();
        let ResponseKind::JoinGroup(again) = connection.call(ApiKey::JoinGroup, 5, &join(&member)) else { panic!() };
        joined = again;
    }
    joined
}

fn sync_v3(connection: &mut KafkaConnection, group: &str, joined: &JoinGroupResponse) -> i16 {
    let assignments = joined
        .members
        .iter()
        .map(|member| {
            kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(member.member_id.clone())
                .with_assignment(Bytes::from_static(b"assigned"))
        })
        .collect();
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_generation_id(joined.generation_id)
        .with_member_id(joined.member_id.clone())
        .with_assignments(assignments);
    let ResponseKind::SyncGroup(synced) = connection.call(ApiKey::SyncGroup, 3, &sync) else { panic!() };
    synced.error_code
}

fn commit_v7(connection: &mut KafkaConnection, group: &str, joined: &JoinGroupResponse, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_generation_id_or_member_epoch(joined.generation_id)
        .with_member_id(joined.member_id.clone())
        .with_topics(vec![kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(TopicName(text("rebalanced")))
            .with_partitions(vec![
                kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset),
            ])]);
    let ResponseKind::OffsetCommit(committed) = connection.call(ApiKey::OffsetCommit, 7, &request) else { panic!() };
    committed.topics[0].partitions[0].error_code
}

/// An eager consumer commits what it consumed when a rebalance starts, and
/// only then rejoins: Kafka accepts that commit (the old generation's
/// assignment still holds while the group prepares the rebalance) and
/// refuses commits only between the join and the sync. Refusing the first
/// made every rebalance of a Kafka group re-deliver what its members had
/// consumed since their last commit.
#[test]
fn a_member_commits_while_its_group_prepares_a_rebalance() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut admin = KafkaConnection::open(broker.kafka_addr.unwrap());
    admin.create_topic("rebalanced", 1);
    let group = "eager";
    let find = FindCoordinatorRequest::default().with_key(text(group));
    let ResponseKind::FindCoordinator(found) = admin.call(ApiKey::FindCoordinator, 0, &find) else { panic!() };
    let coordinator = SocketAddr::from(([127, 0, 0, 1], found.port as u16));

    let mut first = KafkaConnection::open(coordinator);
    let joined = join_v5(&mut first, group, "");
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    assert_eq!(sync_v3(&mut first, group, &joined), 0);
    assert_eq!(commit_v7(&mut first, group, &joined, 5), 0, "a stable member commits");

    // A second member joins; its join waits for the first to rejoin.
    let second = std::thread::spawn(move || {
        let mut connection = KafkaConnection::open(coordinator);
        let joined = join_v5(&mut connection, group, "");
        assert_eq!((joined.error_code, joined.generation_id), (0, 2));
        sync_v3(&mut connection, group, &joined)
    });
    let beat = HeartbeatRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_generation_id(1)
        .with_member_id(joined.member_id.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ResponseKind::Heartbeat(beaten) = first.call(ApiKey::Heartbeat, 3, &beat) else { panic!() };
        if beaten.error_code == 27 {
            break;
        }
        assert_eq!(beaten.error_code, 0);
        assert!(std::time::Instant::now() < deadline, "no rebalance announced");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(commit_v7(&mut first, group, &joined, 7), 0, "commit before rejoining, at generation 1");

    let rejoined = join_v5(&mut first, group, &joined.member_id);
    assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 2));
    assert_eq!(rejoined.leader, rejoined.member_id, "the first member still leads");
    assert_eq!(commit_v7(&mut first, group, &rejoined, 8), 27, "between join and sync: REBALANCE_IN_PROGRESS");
    assert_eq!(sync_v3(&mut first, group, &rejoined), 0);
    assert_eq!(second.join().unwrap(), 0, "the second member synced");

    let fetch = OffsetFetchRequest::default().with_group_id(GroupId(text(group))).with_topics(Some(vec![
        kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(TopicName(text("rebalanced")))
            .with_partition_indexes(vec![0]),
    ]));
    let ResponseKind::OffsetFetch(fetched) = admin.call(ApiKey::OffsetFetch, 7, &fetch) else { panic!() };
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, 7, "the commit made during the rebalance holds");
    assert!(broker.terminate().success());
}

/// Produce v9 of one batch of idempotent producer `producer` at `epoch`
/// and `seq` with `count` records to `topic` partition 0: (error, base offset).
fn idempotent_produce(
    connection: &mut KafkaConnection,
    topic: &str,
    producer: i64,
    epoch: i16,
    seq: i32,
    count: usize,
) -> (i16, i64) {
    use ringbroker::protocol::batch::{BatchBuilder, BatchOptions, Record};
    let mut out = Vec::new();
    let options =
        BatchOptions { producer_id: producer, producer_epoch: epoch, base_sequence: seq, ..BatchOptions::default() };
    let mut builder = BatchBuilder::with_options(&mut out, 1_764_000_000_000, options);
    for index in 0..count {
        let value = format!("seq {}", seq as usize + index);
        builder.push(&Record {
            timestamp_ms: 1_764_000_000_000,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
        });
    }
    produce_batch(connection, topic, Bytes::copy_from_slice(builder.finish()))
}

/// An idempotent producer through the Kafka listener: InitProducerId, then
/// a retried batch answered with its original offset and stored once, a
/// gap refused with OUT_OF_ORDER_SEQUENCE_NUMBER, and an older epoch with
/// INVALID_PRODUCER_EPOCH once the producer moved to a newer one.
#[test]
fn an_idempotent_producer_stores_each_batch_once() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut connection = KafkaConnection::open(broker.kafka_addr.unwrap());
    connection.create_topic("once", 1);
    let mut owner = KafkaConnection::open(connection.leader_of("once"));
    let init = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
    let ResponseKind::InitProducerId(init) = owner.call(ApiKey::InitProducerId, 4, &init) else { panic!() };
    assert_eq!(init.error_code, 0);
    let producer = init.producer_id.0;

    assert_eq!(idempotent_produce(&mut owner, "once", producer, 0, 0, 3), (0, 0));
    assert_eq!(idempotent_produce(&mut owner, "once", producer, 0, 3, 2), (0, 3));
    assert_eq!(idempotent_produce(&mut owner, "once", producer, 0, 0, 3), (0, 0), "a retry: its first offset");
    assert_eq!(idempotent_produce(&mut owner, "once", producer, 0, 9, 1).0, 45, "a gap: OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(idempotent_produce(&mut owner, "once", producer, 1, 0, 1), (0, 5), "a new epoch starts at 0");
    assert_eq!(
        idempotent_produce(&mut owner, "once", producer, 0, 5, 1).0,
        47,
        "the old epoch: INVALID_PRODUCER_EPOCH"
    );

    let fetch = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
        kafka_protocol::messages::fetch_request::FetchTopic::default()
            .with_topic(TopicName(text("once")))
            .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)]),
    ]);
    let ResponseKind::Fetch(fetched) = owner.call(ApiKey::Fetch, 12, &fetch) else { panic!() };
    assert_eq!(fetched.responses[0].partitions[0].high_watermark, 6, "six records, each stored once");
    assert!(broker.terminate().success());
}

/// Produce v9 of `batch` to `topic` partition 0: (error, base offset).
fn produce_batch(connection: &mut KafkaConnection, topic: &str, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
        kafka_protocol::messages::produce_request::TopicProduceData::default()
            .with_name(TopicName(text(topic)))
            .with_partition_data(vec![kafka_protocol::messages::produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))]),
    ]);
    let ResponseKind::Produce(produced) = connection.call(ApiKey::Produce, 9, &request) else { panic!() };
    let partition = &produced.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

/// Fetch v12 of `topic` partition 0 from `offset`: (error, log start, records).
fn fetch_records(connection: &mut KafkaConnection, topic: &str, offset: i64) -> (i16, i64, Bytes) {
    let request = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
        kafka_protocol::messages::fetch_request::FetchTopic::default()
            .with_topic(TopicName(text(topic)))
            .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)]),
    ]);
    let ResponseKind::Fetch(fetched) = connection.call(ApiKey::Fetch, 12, &request) else { panic!() };
    let partition = &fetched.responses[0].partitions[0];
    (partition.error_code, partition.log_start_offset, partition.records.clone().unwrap_or_default())
}

/// A topic's configs as DescribeConfigs `version` shows them: name to
/// (value, source).
fn described(connection: &mut KafkaConnection, version: i16, topic: &str) -> Vec<(String, String, i8)> {
    let request = DescribeConfigsRequest::default().with_resources(vec![
        kafka_protocol::messages::describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(text(topic))
            .with_configuration_keys(None),
    ]);
    let ResponseKind::DescribeConfigs(response) = connection.call(ApiKey::DescribeConfigs, version, &request) else {
        panic!()
    };
    assert_eq!(response.results[0].error_code, 0, "v{version}");
    response.results[0]
        .configs
        .iter()
        .map(|config| {
            (
                config.name.to_string(),
                config.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                config.config_source,
            )
        })
        .collect()
}

fn value_of(configs: &[(String, String, i8)], name: &str) -> (String, i8) {
    let (_, value, source) = configs.iter().find(|(key, ..)| key == name).expect("described");
    (value.clone(), *source)
}

/// Topic configs through DescribeConfigs, AlterConfigs (the whole set
/// replaced), IncrementalAlterConfigs (set and delete) and CreateTopics,
/// each at its lowest and highest version; unknown configs refused with
/// INVALID_CONFIG; and each config doing what it says: a fixed codec
/// recompresses, LogAppendTime stamps, max.message.bytes refuses; then
/// DeleteRecords moves the log start.
#[test]
fn topic_configs_and_record_deletion_at_every_version() {
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::incremental_alter_configs_request as incremental;
    use ringbroker::protocol::batch::{BatchView, Compression};
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut connection = KafkaConnection::open(broker.kafka_addr.unwrap());
    let table = versions(&mut connection);
    // Created with a config.
    let config = |key: &str, value: &str| {
        kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default()
            .with_name(text(key))
            .with_value(Some(text(value)))
    };
    let create = |name: &str, configs| {
        CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                .with_name(TopicName(text(name)))
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(configs),
        ])
    };
    let ResponseKind::CreateTopics(created) =
        connection.call(ApiKey::CreateTopics, 5, &create("tuned", vec![config("retention.ms", "3600000")]))
    else {
        panic!()
    };
    assert_eq!(created.topics[0].error_code, 0);
    let shown = created.topics[0].configs.as_ref().expect("v5 shows the configs");
    assert!(shown.iter().any(|c| c.name.as_str() == "retention.ms" && c.value.as_deref() == Some("3600000")));
    let ResponseKind::CreateTopics(refused) =
        connection.call(ApiKey::CreateTopics, 5, &create("untuned", vec![config("cleanup.policy", "compact")]))
    else {
        panic!()
    };
    assert_eq!(refused.topics[0].error_code, 40, "INVALID_CONFIG");
    assert!(refused.topics[0].error_message.as_ref().is_some_and(|m| m.contains("cleanup.policy")));

    for version in range(&table, ApiKey::DescribeConfigs) {
        let configs = described(&mut connection, version, "tuned");
        assert_eq!(configs.len(), 6, "v{version}: every served config");
        assert_eq!(value_of(&configs, "retention.ms"), ("3600000".into(), 1), "v{version}: set for the topic");
        assert_eq!(value_of(&configs, "compression.type"), ("producer".into(), 5), "v{version}: the default");
    }
    // AlterConfigs replaces the whole set: retention.ms returns to the default.
    for version in range(&table, ApiKey::AlterConfigs) {
        let alter = |configs: Vec<(&str, &str)>, validate_only| {
            AlterConfigsRequest::default().with_validate_only(validate_only).with_resources(vec![
                AlterConfigsResource::default().with_resource_type(2).with_resource_name(text("tuned")).with_configs(
                    configs
                        .into_iter()
                        .map(|(k, v)| AlterableConfig::default().with_name(text(k)).with_value(Some(text(v))))
                        .collect(),
                ),
            ])
        };
        let request = alter(vec![("compression.type", "gzip"), ("message.timestamp.type", "LogAppendTime")], false);
        let ResponseKind::AlterConfigs(altered) = connection.call(ApiKey::AlterConfigs, version, &request) else {
            panic!()
        };
        assert_eq!(altered.responses[0].error_code, 0, "v{version}");
        let request = alter(vec![("segment.bytes", "12")], false);
        let ResponseKind::AlterConfigs(bad) = connection.call(ApiKey::AlterConfigs, version, &request) else {
            panic!()
        };
        assert_eq!(bad.responses[0].error_code, 40, "v{version}: a segment of 12 bytes");
        let request = alter(vec![("retention.bytes", "1")], true);
        let ResponseKind::AlterConfigs(checked) = connection.call(ApiKey::AlterConfigs, version, &request) else {
            panic!()
        };
        assert_eq!(checked.responses[0].error_code, 0, "v{version}: validate only");
    }
    let configs = described(&mut connection, 4, "tuned");
    assert_eq!(value_of(&configs, "retention.ms"), ("604800000".into(), 5), "replaced: back to the default");
    assert_eq!(value_of(&configs, "retention.bytes"), ("-1".into(), 5), "validate-only changed nothing");
    assert_eq!(value_of(&configs, "compression.type"), ("gzip".into(), 1));

    for version in range(&table, ApiKey::IncrementalAlterConfigs) {
        let op = |key: &str, operation, value: Option<&str>| {
            incremental::AlterableConfig::default()
                .with_name(text(key))
                .with_config_operation(operation)
                .with_value(value.map(text))
        };
        let request = |configs| {
            IncrementalAlterConfigsRequest::default().with_resources(vec![incremental::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(text("tuned"))
                .with_configs(configs)])
        };
        let ResponseKind::IncrementalAlterConfigs(altered) = connection.call(
            ApiKey::IncrementalAlterConfigs,
            version,
            &request(vec![op("max.message.bytes", 0, Some("2000")), op("retention.ms", 1, None)]),
        ) else {
            panic!()
        };
        assert_eq!(altered.responses[0].error_code, 0, "v{version}");
        let ResponseKind::IncrementalAlterConfigs(unknown) = connection.call(
            ApiKey::IncrementalAlterConfigs,
            version,
            &request(vec![op("cleanup.policy", 0, Some("compact"))]),
        ) else {
            panic!()
        };
        assert_eq!(unknown.responses[0].error_code, 40, "v{version}: INVALID_CONFIG");
    }
    let configs = described(&mut connection, 1, "tuned");
    assert_eq!(value_of(&configs, "max.message.bytes"), ("2000".into(), 1));
    assert_eq!(value_of(&configs, "compression.type"), ("gzip".into(), 1), "incremental: the rest kept");

    // The configs at work: an uncompressed batch is stored gzip, stamped
    // with the append time; a batch over max.message.bytes is refused.
    let mut owner = KafkaConnection::open(connection.leader_of("tuned"));
    let before = ringbroker::protocol::types::TimestampMs::now().0;
    assert_eq!(produce_batch(&mut owner, "tuned", batch(&[b"one", b"two"])), (0, 0));
    let (code, _, records) = fetch_records(&mut owner, "tuned", 0);
    assert_eq!(code, 0);
    let view = BatchView::parse_header(&records, usize::MAX).unwrap();
    assert_eq!(view.compression(), Compression::Gzip, "recompressed to the topic's codec");
    assert!(view.is_log_append_time());
    assert!(view.max_timestamp() >= before, "stamped with the append time, not the producer's 2025 stamp");
    let inflated = view.inflate(1 << 20).unwrap();
    let values: Vec<_> = view.records_in(&inflated).map(|r| r.unwrap().value.unwrap().to_vec()).collect();
    assert_eq!(values, vec![b"one".to_vec(), b"two".to_vec()]);
    let big = vec![b'x'; 3000];
    assert_eq!(produce_batch(&mut owner, "tuned", batch(&[&big])).0, 10, "MESSAGE_TOO_LARGE");
    // A damaged batch is refused before it is recompressed or stamped
    // (both recompute the CRC, which must not launder the damage).
    let mut damaged = BytesMut::from(&batch(&[b"damaged"])[..]);
    let last = damaged.len() - 2;
    damaged[last] ^= 0x01;
    assert_eq!(produce_batch(&mut owner, "tuned", damaged.freeze()).0, 2, "CORRUPT_MESSAGE");
    for value in [b"3", b"4", b"5"] {
        assert_eq!(produce_batch(&mut owner, "tuned", batch(&[value])).0, 0);
    }

    // DeleteRecords: below 3, then everything (-1), then past the end.
    let delete = |offset: i64| {
        DeleteRecordsRequest::default().with_timeout_ms(5000).with_topics(vec![
            kafka_protocol::messages::delete_records_request::DeleteRecordsTopic::default()
                .with_name(TopicName(text("tuned")))
                .with_partitions(vec![
                    kafka_protocol::messages::delete_records_request::DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(offset),
                ]),
        ])
    };
    let [low, high] = range(&table, ApiKey::DeleteRecords);
    for (version, offset, expected) in [(low, 3, (0, 3)), (high, -1, (0, 5)), (high, 99, (1, -1))] {
        let ResponseKind::DeleteRecords(deleted) = owner.call(ApiKey::DeleteRecords, version, &delete(offset)) else {
            panic!()
        };
        let partition = &deleted.topics[0].partitions[0];
        assert_eq!((partition.error_code, partition.low_watermark), expected, "v{version} offset {offset}");
        if offset == 3 {
            let (code, log_start, _) = fetch_records(&mut owner, "tuned", 3);
            assert_eq!((code, log_start), (0, 3));
            assert_eq!(fetch_records(&mut owner, "tuned", 2).0, 1, "below the start: OFFSET_OUT_OF_RANGE");
        }
    }
    assert!(broker.terminate().success());
}

#[test]
fn kafka_produce_requests_are_timed_until_their_answer_is_written() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut connection = KafkaConnection::open(broker.kafka_addr.unwrap());
    connection.create_topic("timed", 1);
    let mut owner = KafkaConnection::open(connection.leader_of("timed"));
    let timed = || broker.stats(broker.addr).shards.iter().any(|shard| !shard.produce_request_latency_us.is_empty());
    assert!(!timed(), "nothing produced yet");
    let (code, base) = produce_batch(&mut owner, "timed", batch(&[b"a", b"b"]));
    assert_eq!((code, base), (0, 0));
    // Recorded once the answer is written, which the client may see first.
    broker.wait_until("the produce request is timed", timed);
    assert!(broker.terminate().success());
}
