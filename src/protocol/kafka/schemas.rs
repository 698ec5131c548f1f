//! The layout of every Kafka request body the broker serves, for the
//! bounds check (`bounds.rs`). One table per API: each field with the
//! versions it exists in. Tagged fields are not listed: the walk skips
//! every struct's tagged section by its sizes.
//!
//! The versions served per API are the ranges in `SCHEMAS`; a test
//! encodes each request at each of them with `kafka-protocol` and checks
//! that the walk consumes exactly the encoded bytes.

use super::bounds::{always, between, since, Field, RequestSchema, Shape};

// Produce (key 0), versions 3-9, flexible from 9.
const PRODUCE_PARTITION: &[Field] = &[always(Shape::Int32), always(Shape::Bytes)];
const PRODUCE_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Structs(PRODUCE_PARTITION))];
const PRODUCE: &[Field] =
    &[always(Shape::String), always(Shape::Int16), always(Shape::Int32), always(Shape::Structs(PRODUCE_TOPIC))];

// Fetch (key 1), versions 4-12, flexible from 12. The cluster id (v12+)
// is a tagged field only.
const FETCH_PARTITION: &[Field] = &[
    always(Shape::Int32),
    since(9, Shape::Int32),
    always(Shape::Int64),
    since(12, Shape::Int32),
    since(5, Shape::Int64),
    always(Shape::Int32),
];
const FETCH_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Structs(FETCH_PARTITION))];
const FETCH_FORGOTTEN_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Primitives(&Shape::Int32))];
const FETCH: &[Field] = &[
    always(Shape::Int32),
    always(Shape::Int32),
    always(Shape::Int32),
    always(Shape::Int32),
    always(Shape::Int8),
    since(7, Shape::Int32),
    since(7, Shape::Int32),
    always(Shape::Structs(FETCH_TOPIC)),
    since(7, Shape::Structs(FETCH_FORGOTTEN_TOPIC)),
    since(11, Shape::String),
];

// ListOffsets (key 2), versions 1-7, flexible from 6.
const LIST_OFFSETS_PARTITION: &[Field] = &[always(Shape::Int32), since(4, Shape::Int32), always(Shape::Int64)];
const LIST_OFFSETS_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Structs(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS: &[Field] =
    &[always(Shape::Int32), since(2, Shape::Int8), always(Shape::Structs(LIST_OFFSETS_TOPIC))];

// Metadata (key 3), versions 0-12, flexible from 9.
const METADATA_TOPIC: &[Field] = &[since(10, Shape::Uuid), always(Shape::String)];
const METADATA: &[Field] = &[
    always(Shape::Structs(METADATA_TOPIC)),
    since(4, Shape::Bool),
    between(8, 10, Shape::Bool),
    since(8, Shape::Bool),
];

// OffsetCommit (key 8), versions 2-8 (the crate has none older), flexible
// from 8.
const OFFSET_COMMIT_PARTITION: &[Field] =
    &[always(Shape::Int32), always(Shape::Int64), since(6, Shape::Int32), always(Shape::String)];
const OFFSET_COMMIT_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Structs(OFFSET_COMMIT_PARTITION))];
const OFFSET_COMMIT: &[Field] = &[
    always(Shape::String),
    always(Shape::Int32),
    always(Shape::String),
    since(7, Shape::String),
    between(0, 4, Shape::Int64),
    always(Shape::Structs(OFFSET_COMMIT_TOPIC)),
];

// OffsetFetch (key 9), versions 1-8, flexible from 6. Up to v7 one group
// and its topics; from v8 an array of groups.
const OFFSET_FETCH_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Primitives(&Shape::Int32))];
const OFFSET_FETCH_GROUP_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Primitives(&Shape::Int32))];
const OFFSET_FETCH_GROUP: &[Field] = &[always(Shape::String), always(Shape::Structs(OFFSET_FETCH_GROUP_TOPIC))];
const OFFSET_FETCH: &[Field] = &[
    between(0, 7, Shape::String),
    between(0, 7, Shape::Structs(OFFSET_FETCH_TOPIC)),
    since(8, Shape::Structs(OFFSET_FETCH_GROUP)),
    since(7, Shape::Bool),
];

// FindCoordinator (key 10), versions 0-4, flexible from 3. From v4 a batch
// of keys replaces the single key.
const FIND_COORDINATOR: &[Field] =
    &[between(0, 3, Shape::String), since(1, Shape::Int8), since(4, Shape::Primitives(&Shape::String))];

// JoinGroup (key 11), versions 0-7, flexible from 6.
const JOIN_GROUP_PROTOCOL: &[Field] = &[always(Shape::String), always(Shape::Bytes)];
const JOIN_GROUP: &[Field] = &[
    always(Shape::String),
    always(Shape::Int32),
    since(1, Shape::Int32),
    always(Shape::String),
    since(5, Shape::String),
    always(Shape::String),
    always(Shape::Structs(JOIN_GROUP_PROTOCOL)),
];

// Heartbeat (key 12), versions 0-4, flexible from 4.
const HEARTBEAT: &[Field] =
    &[always(Shape::String), always(Shape::Int32), always(Shape::String), since(3, Shape::String)];

// LeaveGroup (key 13), versions 0-4, flexible from 4. From v3 a batch of
// members replaces the single member id.
const LEAVE_GROUP_MEMBER: &[Field] = &[always(Shape::String), always(Shape::String)];
const LEAVE_GROUP: &[Field] =
    &[always(Shape::String), between(0, 2, Shape::String), since(3, Shape::Structs(LEAVE_GROUP_MEMBER))];

// SyncGroup (key 14), versions 0-5, flexible from 4.
const SYNC_GROUP_ASSIGNMENT: &[Field] = &[always(Shape::String), always(Shape::Bytes)];
const SYNC_GROUP: &[Field] = &[
    always(Shape::String),
    always(Shape::Int32),
    always(Shape::String),
    since(3, Shape::String),
    since(5, Shape::String),
    since(5, Shape::String),
    always(Shape::Structs(SYNC_GROUP_ASSIGNMENT)),
];

// DescribeGroups (key 15), versions 0-5, flexible from 5.
const DESCRIBE_GROUPS: &[Field] = &[always(Shape::Primitives(&Shape::String)), since(3, Shape::Bool)];

// ListGroups (key 16), versions 0-4, flexible from 3 (empty before v4).
const LIST_GROUPS: &[Field] = &[since(4, Shape::Primitives(&Shape::String))];

// ApiVersions (key 18), versions 0-3, flexible from 3 (empty before).
const API_VERSIONS: &[Field] = &[since(3, Shape::String), since(3, Shape::String)];

// CreateTopics (key 19), versions 2-5, flexible from 5.
const CREATE_TOPICS_ASSIGNMENT: &[Field] = &[always(Shape::Int32), always(Shape::Primitives(&Shape::Int32))];
const CREATE_TOPICS_CONFIG: &[Field] = &[always(Shape::String), always(Shape::String)];
const CREATE_TOPICS_TOPIC: &[Field] = &[
    always(Shape::String),
    always(Shape::Int32),
    always(Shape::Int16),
    always(Shape::Structs(CREATE_TOPICS_ASSIGNMENT)),
    always(Shape::Structs(CREATE_TOPICS_CONFIG)),
];
const CREATE_TOPICS: &[Field] =
    &[always(Shape::Structs(CREATE_TOPICS_TOPIC)), always(Shape::Int32), always(Shape::Bool)];

// DeleteTopics (key 20), versions 1-4, flexible from 4.
const DELETE_TOPICS: &[Field] = &[always(Shape::Primitives(&Shape::String)), always(Shape::Int32)];

// InitProducerId (key 22), versions 0-4, flexible from 2.
const INIT_PRODUCER_ID: &[Field] =
    &[always(Shape::String), always(Shape::Int32), since(3, Shape::Int64), since(3, Shape::Int16)];

// DeleteRecords (key 21), versions 0-2, flexible from 2.
const DELETE_RECORDS_PARTITION: &[Field] = &[always(Shape::Int32), always(Shape::Int64)];
const DELETE_RECORDS_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Structs(DELETE_RECORDS_PARTITION))];
const DELETE_RECORDS: &[Field] = &[always(Shape::Structs(DELETE_RECORDS_TOPIC)), always(Shape::Int32)];

// DescribeConfigs (key 32), versions 1-4 (the crate has no v0), flexible
// from 4.
const DESCRIBE_CONFIGS_RESOURCE: &[Field] =
    &[always(Shape::Int8), always(Shape::String), always(Shape::Primitives(&Shape::String))];
const DESCRIBE_CONFIGS: &[Field] =
    &[always(Shape::Structs(DESCRIBE_CONFIGS_RESOURCE)), since(1, Shape::Bool), since(3, Shape::Bool)];

// AlterConfigs (key 33), versions 0-2, flexible from 2.
const ALTER_CONFIGS_CONFIG: &[Field] = &[always(Shape::String), always(Shape::String)];
const ALTER_CONFIGS_RESOURCE: &[Field] =
    &[always(Shape::Int8), always(Shape::String), always(Shape::Structs(ALTER_CONFIGS_CONFIG))];
const ALTER_CONFIGS: &[Field] = &[always(Shape::Structs(ALTER_CONFIGS_RESOURCE)), always(Shape::Bool)];

// IncrementalAlterConfigs (key 44), versions 0-1, flexible from 1.
const INCREMENTAL_ALTER_CONFIGS_CONFIG: &[Field] = &[always(Shape::String), always(Shape::Int8), always(Shape::String)];
const INCREMENTAL_ALTER_CONFIGS_RESOURCE: &[Field] =
    &[always(Shape::Int8), always(Shape::String), always(Shape::Structs(INCREMENTAL_ALTER_CONFIGS_CONFIG))];
const INCREMENTAL_ALTER_CONFIGS: &[Field] =
    &[always(Shape::Structs(INCREMENTAL_ALTER_CONFIGS_RESOURCE)), always(Shape::Bool)];

// SaslHandshake (key 17), versions 0-1, never flexible. Version 0 is
// listed because librdkafka looks for it before it uses version 1; after a
// v0 handshake the tokens would travel without Kafka framing, so the login
// refuses it (UNSUPPORTED_VERSION).
const SASL_HANDSHAKE: &[Field] = &[always(Shape::String)];

// SaslAuthenticate (key 36), versions 0-2, flexible from 2.
const SASL_AUTHENTICATE: &[Field] = &[always(Shape::Bytes)];

// DescribeUserScramCredentials (key 50), version 0, flexible.
const DESCRIBE_USER_SCRAM_USER: &[Field] = &[always(Shape::String)];
const DESCRIBE_USER_SCRAM_CREDENTIALS: &[Field] = &[always(Shape::Structs(DESCRIBE_USER_SCRAM_USER))];

// AlterUserScramCredentials (key 51), version 0, flexible.
const SCRAM_DELETION: &[Field] = &[always(Shape::String), always(Shape::Int8)];
const SCRAM_UPSERTION: &[Field] =
    &[always(Shape::String), always(Shape::Int8), always(Shape::Int32), always(Shape::Bytes), always(Shape::Bytes)];
const ALTER_USER_SCRAM_CREDENTIALS: &[Field] =
    &[always(Shape::Structs(SCRAM_DELETION)), always(Shape::Structs(SCRAM_UPSERTION))];

// DescribeAcls (key 29), CreateAcls (30), DeleteAcls (31): versions 1-3,
// flexible from 2. An ACL filter and an ACL have the same layout.
const ACL: &[Field] = &[
    always(Shape::Int8),
    always(Shape::String),
    always(Shape::Int8),
    always(Shape::String),
    always(Shape::String),
    always(Shape::Int8),
    always(Shape::Int8),
];
const CREATE_ACLS: &[Field] = &[always(Shape::Structs(ACL))];
const DELETE_ACLS: &[Field] = &[always(Shape::Structs(ACL))];

/// Every request the broker serves: (api key, versions, layout).
pub const SCHEMAS: &[RequestSchema] = &[
    RequestSchema { api_key: 0, min_version: 3, max_version: 9, flexible_from: 9, fields: PRODUCE },
    RequestSchema { api_key: 1, min_version: 4, max_version: 12, flexible_from: 12, fields: FETCH },
    RequestSchema { api_key: 2, min_version: 1, max_version: 7, flexible_from: 6, fields: LIST_OFFSETS },
    RequestSchema { api_key: 3, min_version: 0, max_version: 12, flexible_from: 9, fields: METADATA },
    RequestSchema { api_key: 8, min_version: 2, max_version: 8, flexible_from: 8, fields: OFFSET_COMMIT },
    RequestSchema { api_key: 9, min_version: 1, max_version: 8, flexible_from: 6, fields: OFFSET_FETCH },
    RequestSchema { api_key: 10, min_version: 0, max_version: 4, flexible_from: 3, fields: FIND_COORDINATOR },
    RequestSchema { api_key: 11, min_version: 0, max_version: 7, flexible_from: 6, fields: JOIN_GROUP },
    RequestSchema { api_key: 12, min_version: 0, max_version: 4, flexible_from: 4, fields: HEARTBEAT },
    RequestSchema { api_key: 13, min_version: 0, max_version: 4, flexible_from: 4, fields: LEAVE_GROUP },
    RequestSchema { api_key: 14, min_version: 0, max_version: 5, flexible_from: 4, fields: SYNC_GROUP },
    RequestSchema { api_key: 15, min_version: 0, max_version: 5, flexible_from: 5, fields: DESCRIBE_GROUPS },
    RequestSchema { api_key: 16, min_version: 0, max_version: 4, flexible_from: 3, fields: LIST_GROUPS },
    RequestSchema { api_key: 17, min_version: 0, max_version: 1, flexible_from: i16::MAX, fields: SASL_HANDSHAKE },
    RequestSchema { api_key: 18, min_version: 0, max_version: 3, flexible_from: 3, fields: API_VERSIONS },
    RequestSchema { api_key: 19, min_version: 2, max_version: 5, flexible_from: 5, fields: CREATE_TOPICS },
    RequestSchema { api_key: 20, min_version: 1, max_version: 4, flexible_from: 4, fields: DELETE_TOPICS },
    RequestSchema { api_key: 21, min_version: 0, max_version: 2, flexible_from: 2, fields: DELETE_RECORDS },
    RequestSchema { api_key: 22, min_version: 0, max_version: 4, flexible_from: 2, fields: INIT_PRODUCER_ID },
    RequestSchema { api_key: 29, min_version: 1, max_version: 3, flexible_from: 2, fields: ACL },
    RequestSchema { api_key: 30, min_version: 1, max_version: 3, flexible_from: 2, fields: CREATE_ACLS },
    RequestSchema { api_key: 31, min_version: 1, max_version: 3, flexible_from: 2, fields: DELETE_ACLS },
    RequestSchema { api_key: 32, min_version: 1, max_version: 4, flexible_from: 4, fields: DESCRIBE_CONFIGS },
    RequestSchema { api_key: 33, min_version: 0, max_version: 2, flexible_from: 2, fields: ALTER_CONFIGS },
    RequestSchema { api_key: 36, min_version: 0, max_version: 2, flexible_from: 2, fields: SASL_AUTHENTICATE },
    RequestSchema { api_key: 44, min_version: 0, max_version: 1, flexible_from: 1, fields: INCREMENTAL_ALTER_CONFIGS },
    RequestSchema {
        api_key: 50,
        min_version: 0,
        max_version: 0,
        flexible_from: 0,
        fields: DESCRIBE_USER_SCRAM_CREDENTIALS,
    },
    RequestSchema {
        api_key: 51,
        min_version: 0,
        max_version: 0,
        flexible_from: 0,
        fields: ALTER_USER_SCRAM_CREDENTIALS,
    },
];

/// The layout of `api_key`'s requests, if the broker serves it.
pub fn schema(api_key: i16) -> Option<&'static RequestSchema> {
    SCHEMAS.iter().find(|schema| schema.api_key == api_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::kafka::bounds::walked_len;
    use bytes::{Buf, Bytes, BytesMut};
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
    };
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        ApiVersionsRequest, BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeGroupsRequest, FetchRequest,
        FindCoordinatorRequest, GroupId, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
        ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest,
        ProduceRequest, ProducerId, SyncGroupRequest, TopicName, TransactionalId,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::collections::HashSet;

    /// Encodes `request` at `version`, checks the walk consumes it all, and
    /// that the crate decodes the same bytes to their end.
    fn walks_exactly<T: Encodable + Decodable>(api_key: i16, version: i16, request: &T) {
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).unwrap_or_else(|error| panic!("encoding key {api_key} v{version}: {error}"));
        let schema = schema(api_key).expect("a schema");
        let walked =
            walked_len(schema, version, &buf).unwrap_or_else(|error| panic!("key {api_key} v{version}: {error}"));
        assert_eq!(walked, buf.len(), "key {api_key} v{version}: the walk must take every encoded byte");
        let mut bytes = buf.freeze();
        T::decode(&mut bytes, version).unwrap_or_else(|error| panic!("decoding key {api_key} v{version}: {error}"));
        assert_eq!(bytes.remaining(), 0, "key {api_key} v{version}: the crate left bytes undecoded");
    }

    /// Builds the request for each served version of `api_key` and walks it.
    fn walks_exactly_at_every_version<T: Encodable + Decodable>(api_key: i16, request: impl Fn(i16) -> T) {
        let schema = schema(api_key).expect("a schema");
        for version in schema.min_version..=schema.max_version {
            walks_exactly(api_key, version, &request(version));
        }
    }

    fn name(text: &str) -> StrBytes {
        StrBytes::from_string(text.to_string())
    }

    fn topic_name(text: &str) -> TopicName {
        TopicName(name(text))
    }

    fn group_id(text: &str) -> GroupId {
        GroupId(name(text))
    }

    /// `value` where the version has the field, else empty or false (the
    /// encoder refuses a set field a version lacks).
    fn from<T: Default>(version: i16, since: i16, value: T) -> T {
        if version >= since {
            value
        } else {
            T::default()
        }
    }

    #[test]
    fn every_schema_has_its_own_key_and_sensible_versions() {
        /// Each field exists in some version its parent exists in.
        fn check(api_key: i16, fields: &[Field], versions: (i16, i16)) {
            for field in fields {
                assert!(
                    field.since <= field.until,
                    "key {api_key}: a field from v{} until v{}",
                    field.since,
                    field.until
                );
                let (from, to) = (field.since.max(versions.0), field.until.min(versions.1));
                assert!(from <= to, "key {api_key}: a field in v{}-{} is never served", field.since, field.until);
                if let Shape::Structs(inner) = field.shape {
                    check(api_key, inner, (from, to));
                }
            }
        }
        let mut keys = HashSet::new();
        for schema in SCHEMAS {
            let key = schema.api_key;
            assert!(keys.insert(key), "key {key} is listed twice");
            assert!(0 <= schema.min_version && schema.min_version <= schema.max_version, "key {key}: versions");
            assert!(schema.flexible_from >= 0, "key {key}: flexible version");
            check(key, schema.fields, (schema.min_version, schema.max_version));
        }
    }

    #[test]
    fn produce_requests_walk_exactly_at_every_version() {
        let partition =
            |index| PartitionProduceData::default().with_index(index).with_records(Some(Bytes::from_static(b"batch")));
        let topic = |text: &str| {
            TopicProduceData::default()
                .with_name(topic_name(text))
                .with_partition_data(vec![partition(0), partition(1)])
        };
        let request = ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(name("payments-tx"))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![topic("orders"), topic("payments")]);
        walks_exactly_at_every_version(0, |_| request.clone());
    }

    #[test]
    fn fetch_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(1, |version| {
            let partition = |index| {
                FetchPartition::default()
                    .with_partition(index)
                    .with_current_leader_epoch(5)
                    .with_fetch_offset(1_000)
                    .with_last_fetched_epoch(if version >= 12 { 4 } else { -1 })
                    .with_log_start_offset(10)
                    .with_partition_max_bytes(1 << 20)
                    // A tag of a later version, which the walk skips by its size.
                    .with_unknown_tagged_field(9, Bytes::from_static(b"future"))
            };
            let fetched = |text: &str| {
                FetchTopic::default().with_topic(topic_name(text)).with_partitions(vec![partition(0), partition(1)])
            };
            let forgotten =
                |text: &str| ForgottenTopic::default().with_topic(topic_name(text)).with_partitions(vec![2, 3]);
            FetchRequest::default()
                .with_cluster_id(Some(name("cluster-1")))
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(50 << 20)
                .with_isolation_level(1)
                .with_session_id(7)
                .with_session_epoch(3)
                .with_topics(vec![fetched("orders"), fetched("payments")])
                .with_forgotten_topics_data(from(version, 7, vec![forgotten("audit"), forgotten("refunds")]))
                .with_rack_id(name("rack-a"))
        });
    }

    #[test]
    fn list_offsets_requests_walk_exactly_at_every_version() {
        let partition = |index| {
            ListOffsetsPartition::default()
                .with_partition_index(index)
                .with_current_leader_epoch(5)
                .with_timestamp(1_700_000_000_000)
        };
        let topic = |text: &str| {
            ListOffsetsTopic::default().with_name(topic_name(text)).with_partitions(vec![partition(0), partition(1)])
        };
        walks_exactly_at_every_version(2, |version| {
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(from(version, 2, 1))
                .with_topics(vec![topic("orders"), topic("payments")])
        });
    }

    #[test]
    fn metadata_requests_walk_exactly_at_every_version() {
        let topic = |text: &str| {
            MetadataRequestTopic::default()
                .with_topic_id("5c0d1a8e-7d4b-4b7e-9a51-3f2d6c1e8b90".parse().unwrap())
                .with_name(Some(topic_name(text)))
        };
        walks_exactly_at_every_version(3, |version| {
            MetadataRequest::default()
                .with_topics(Some(vec![topic("orders"), topic("payments")]))
                // True (the default) is the only value before v4.
                .with_allow_auto_topic_creation(version < 4)
                .with_include_cluster_authorized_operations((8..=10).contains(&version))
                .with_include_topic_authorized_operations(version >= 8)
        });
    }

    #[test]
    fn offset_commit_requests_walk_exactly_at_every_version() {
        let partition = |index| {
            OffsetCommitRequestPartition::default()
                .with_partition_index(index)
                .with_committed_offset(42)
                .with_committed_leader_epoch(5)
                .with_committed_metadata(Some(name("checkpoint")))
        };
        let topic = |text: &str| {
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(text))
                .with_partitions(vec![partition(0), partition(1)])
        };
        walks_exactly_at_every_version(8, |version| {
            OffsetCommitRequest::default()
                .with_group_id(group_id("billing"))
                .with_generation_id_or_member_epoch(12)
                .with_member_id(name("consumer-1-4f1c"))
                .with_group_instance_id(from(version, 7, Some(name("billing-host-1"))))
                .with_retention_time_ms(86_400_000)
                .with_topics(vec![topic("orders"), topic("payments")])
        });
    }

    #[test]
    fn offset_fetch_requests_walk_exactly_at_every_version() {
        let topic = |text: &str| {
            OffsetFetchRequestTopic::default().with_name(topic_name(text)).with_partition_indexes(vec![0, 1])
        };
        let topics = |text: &str| {
            OffsetFetchRequestTopics::default().with_name(topic_name(text)).with_partition_indexes(vec![0, 1])
        };
        let group = |text: &str| {
            OffsetFetchRequestGroup::default()
                .with_group_id(group_id(text))
                .with_topics(Some(vec![topics("orders"), topics("payments")]))
        };
        walks_exactly_at_every_version(9, |version| {
            let request = if version <= 7 {
                OffsetFetchRequest::default()
                    .with_group_id(group_id("billing"))
                    .with_topics(Some(vec![topic("orders"), topic("payments")]))
            } else {
                OffsetFetchRequest::default().with_groups(vec![group("billing"), group("audit")])
            };
            request.with_require_stable(version >= 7)
        });
    }

    #[test]
    fn find_coordinator_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(10, |version| {
            let request = FindCoordinatorRequest::default().with_key_type(from(version, 1, 1));
            if version <= 3 {
                request.with_key(name("payments-tx"))
            } else {
                request.with_coordinator_keys(vec![name("payments-tx"), name("orders-tx")])
            }
        });
    }

    #[test]
    fn join_group_requests_walk_exactly_at_every_version() {
        let protocol = |text: &str| {
            JoinGroupRequestProtocol::default()
                .with_name(name(text))
                .with_metadata(Bytes::from_static(b"\x00\x03\x00\x00\x00\x01\x00\x06orders"))
        };
        walks_exactly_at_every_version(11, |version| {
            JoinGroupRequest::default()
                .with_group_id(group_id("billing"))
                .with_session_timeout_ms(45_000)
                .with_rebalance_timeout_ms(300_000)
                .with_member_id(name("consumer-1-4f1c"))
                .with_group_instance_id(from(version, 5, Some(name("billing-host-1"))))
                .with_protocol_type(name("consumer"))
                .with_protocols(vec![protocol("range"), protocol("cooperative-sticky")])
        });
    }

    #[test]
    fn heartbeat_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(12, |version| {
            HeartbeatRequest::default()
                .with_group_id(group_id("billing"))
                .with_generation_id(12)
                .with_member_id(name("consumer-1-4f1c"))
                .with_group_instance_id(from(version, 3, Some(name("billing-host-1"))))
        });
    }

    #[test]
    fn leave_group_requests_walk_exactly_at_every_version() {
        let member = |text: &str| {
            MemberIdentity::default().with_member_id(name(text)).with_group_instance_id(Some(name("billing-host-1")))
        };
        walks_exactly_at_every_version(13, |version| {
            let request = LeaveGroupRequest::default().with_group_id(group_id("billing"));
            if version <= 2 {
                request.with_member_id(name("consumer-1-4f1c"))
            } else {
                request.with_members(vec![member("consumer-1-4f1c"), member("consumer-2-9a0b")])
            }
        });
    }

    #[test]
    fn sync_group_requests_walk_exactly_at_every_version() {
        let assignment = |text: &str| {
            SyncGroupRequestAssignment::default()
                .with_member_id(name(text))
                .with_assignment(Bytes::from_static(b"\x00\x03\x00\x00\x00\x01\x00\x06orders"))
        };
        walks_exactly_at_every_version(14, |version| {
            SyncGroupRequest::default()
                .with_group_id(group_id("billing"))
                .with_generation_id(12)
                .with_member_id(name("consumer-1-4f1c"))
                .with_group_instance_id(from(version, 3, Some(name("billing-host-1"))))
                .with_protocol_type(Some(name("consumer")))
                .with_protocol_name(Some(name("range")))
                .with_assignments(vec![assignment("consumer-1-4f1c"), assignment("consumer-2-9a0b")])
        });
    }

    #[test]
    fn describe_groups_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(15, |version| {
            DescribeGroupsRequest::default()
                .with_groups(vec![group_id("billing"), group_id("audit")])
                .with_include_authorized_operations(version >= 3)
        });
    }

    #[test]
    fn list_groups_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(16, |version| {
            ListGroupsRequest::default().with_states_filter(from(version, 4, vec![name("Stable"), name("Empty")]))
        });
    }

    #[test]
    fn api_versions_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(18, |_| {
            ApiVersionsRequest::default()
                .with_client_software_name(name("apache-kafka-java"))
                .with_client_software_version(name("4.0.0"))
        });
    }

    #[test]
    fn create_topics_requests_walk_exactly_at_every_version() {
        let assignment = |index| {
            CreatableReplicaAssignment::default()
                .with_partition_index(index)
                .with_broker_ids(vec![BrokerId(1), BrokerId(2)])
        };
        let config =
            |key: &str, value: &str| CreatableTopicConfig::default().with_name(name(key)).with_value(Some(name(value)));
        let topic = |text: &str| {
            // Explicit assignments leave the partition count and replication
            // factor to them (-1).
            CreatableTopic::default()
                .with_name(topic_name(text))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(vec![assignment(0), assignment(1)])
                .with_configs(vec![config("cleanup.policy", "compact"), config("retention.ms", "86400000")])
        };
        walks_exactly_at_every_version(19, |_| {
            CreateTopicsRequest::default()
                .with_topics(vec![topic("orders"), topic("payments")])
                .with_timeout_ms(30_000)
                .with_validate_only(true)
        });
    }

    #[test]
    fn delete_topics_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(20, |_| {
            DeleteTopicsRequest::default()
                .with_topic_names(vec![topic_name("orders"), topic_name("payments")])
                .with_timeout_ms(30_000)
        });
    }

    #[test]
    fn init_producer_id_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(22, |version| {
            let (producer_id, producer_epoch) = if version >= 3 { (4_242, 7) } else { (-1, -1) };
            InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(name("payments-tx"))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(producer_epoch)
        });
    }

    #[test]
    fn delete_records_requests_walk_exactly_at_every_version() {
        use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
        let partition =
            |index, offset| DeleteRecordsPartition::default().with_partition_index(index).with_offset(offset);
        walks_exactly_at_every_version(21, |_| {
            kafka_protocol::messages::DeleteRecordsRequest::default()
                .with_topics(vec![DeleteRecordsTopic::default()
                    .with_name(topic_name("orders"))
                    .with_partitions(vec![partition(0, 42), partition(3, -1)])])
                .with_timeout_ms(30_000)
        });
    }

    #[test]
    fn describe_configs_requests_walk_exactly_at_every_version() {
        use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
        walks_exactly_at_every_version(32, |version| {
            let resources = vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("orders"))
                    .with_configuration_keys(Some(vec![name("retention.ms"), name("segment.bytes")])),
                DescribeConfigsResource::default().with_resource_type(4).with_resource_name(name("0")),
            ];
            kafka_protocol::messages::DescribeConfigsRequest::default()
                .with_resources(resources)
                .with_include_synonyms(true)
                .with_include_documentation(from(version, 3, true))
        });
    }

    #[test]
    fn alter_configs_requests_walk_exactly_at_every_version() {
        use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let config = |key: &str, value: Option<&str>| {
            AlterableConfig::default().with_name(name(key)).with_value(value.map(name))
        };
        walks_exactly_at_every_version(33, |_| {
            kafka_protocol::messages::AlterConfigsRequest::default()
                .with_resources(vec![AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("orders"))
                    .with_configs(vec![config("retention.ms", Some("60000")), config("segment.bytes", None)])])
                .with_validate_only(true)
        });
    }

    #[test]
    fn incremental_alter_configs_requests_walk_exactly_at_every_version() {
        use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let config = |key: &str, op, value: Option<&str>| {
            AlterableConfig::default().with_name(name(key)).with_config_operation(op).with_value(value.map(name))
        };
        walks_exactly_at_every_version(44, |_| {
            kafka_protocol::messages::IncrementalAlterConfigsRequest::default()
                .with_resources(vec![AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("orders"))
                    .with_configs(vec![config("retention.ms", 0, Some("60000")), config("segment.bytes", 1, None)])])
                .with_validate_only(false)
        });
    }

    #[test]
    fn sasl_requests_walk_exactly_at_every_version() {
        walks_exactly_at_every_version(17, |_| {
            kafka_protocol::messages::SaslHandshakeRequest::default().with_mechanism(name("SCRAM-SHA-512"))
        });
        walks_exactly_at_every_version(36, |_| {
            kafka_protocol::messages::SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"n,,n=alice,r=nonce"))
        });
    }

    #[test]
    fn user_scram_credentials_requests_walk_exactly() {
        use kafka_protocol::messages::alter_user_scram_credentials_request::{
            ScramCredentialDeletion, ScramCredentialUpsertion,
        };
        use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
        walks_exactly_at_every_version(50, |_| {
            kafka_protocol::messages::DescribeUserScramCredentialsRequest::default()
                .with_users(Some(vec![UserName::default().with_name(name("alice"))]))
        });
        walks_exactly_at_every_version(50, |_| {
            kafka_protocol::messages::DescribeUserScramCredentialsRequest::default().with_users(None)
        });
        walks_exactly_at_every_version(51, |_| {
            kafka_protocol::messages::AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![ScramCredentialDeletion::default().with_name(name("bob")).with_mechanism(1)])
                .with_upsertions(vec![ScramCredentialUpsertion::default()
                    .with_name(name("alice"))
                    .with_mechanism(2)
                    .with_iterations(8192)
                    .with_salt(Bytes::from_static(b"salt"))
                    .with_salted_password(Bytes::from(vec![7; 64]))])
        });
    }

    #[test]
    fn acl_requests_walk_exactly_at_every_version() {
        use kafka_protocol::messages::create_acls_request::AclCreation;
        use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
        walks_exactly_at_every_version(29, |_| {
            kafka_protocol::messages::DescribeAclsRequest::default()
                .with_resource_type_filter(2)
                .with_resource_name_filter(Some(name("orders")))
                .with_pattern_type_filter(3)
                .with_principal_filter(None)
                .with_host_filter(Some(name("*")))
                .with_operation(1)
                .with_permission_type(1)
        });
        walks_exactly_at_every_version(30, |_| {
            kafka_protocol::messages::CreateAclsRequest::default().with_creations(vec![AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(name("orders"))
                .with_resource_pattern_type(3)
                .with_principal(name("User:alice"))
                .with_host(name("*"))
                .with_operation(3)
                .with_permission_type(3)])
        });
        walks_exactly_at_every_version(31, |_| {
            kafka_protocol::messages::DeleteAclsRequest::default().with_filters(vec![DeleteAclsFilter::default()
                .with_resource_type_filter(1)
                .with_resource_name_filter(None)
                .with_pattern_type_filter(1)
                .with_principal_filter(Some(name("User:alice")))
                .with_host_filter(None)
                .with_operation(1)
                .with_permission_type(1)])
        });
    }
}
