//! The layout of every Kafka request body the broker serves, for the
//! bounds check (`bounds.rs`). One table per API: each field with the
//! versions it exists in. Tagged fields are not listed: the walk skips
//! every struct's tagged section by its sizes.
//!
//! The versions served per API are the ranges in `SCHEMAS`; a test
//! encodes each request at each of them with `kafka-protocol` and checks
//! that the walk consumes exactly the encoded bytes.

#[allow(unused_imports)] // `since` and `between` serve the tables still to come.
use super::bounds::{always, between, since, Field, RequestSchema, Shape};

// Produce (key 0), versions 3-9, flexible from 9.
const PRODUCE_PARTITION: &[Field] = &[always(Shape::Int32), always(Shape::Bytes)];
const PRODUCE_TOPIC: &[Field] = &[always(Shape::String), always(Shape::Structs(PRODUCE_PARTITION))];
const PRODUCE: &[Field] =
    &[always(Shape::String), always(Shape::Int16), always(Shape::Int32), always(Shape::Structs(PRODUCE_TOPIC))];

/// Every request the broker serves: (api key, versions, layout).
pub const SCHEMAS: &[RequestSchema] =
    &[RequestSchema { api_key: 0, min_version: 3, max_version: 9, flexible_from: 9, fields: PRODUCE }];

/// The layout of `api_key`'s requests, if the broker serves it.
pub fn schema(api_key: i16) -> Option<&'static RequestSchema> {
    SCHEMAS.iter().find(|schema| schema.api_key == api_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::kafka::bounds::check_body;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    /// Encodes `request` at `version` and checks the walk consumes it all.
    fn walks_exactly<T: Encodable>(api_key: i16, version: i16, request: &T) {
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).unwrap_or_else(|error| panic!("encoding key {api_key} v{version}: {error}"));
        let schema = schema(api_key).expect("a schema");
        check_body(schema, version, &buf).unwrap_or_else(|error| panic!("key {api_key} v{version}: {error}"));
    }

    fn versions(api_key: i16) -> std::ops::RangeInclusive<i16> {
        let schema = schema(api_key).expect("a schema");
        schema.min_version..=schema.max_version
    }

    fn name(text: &str) -> StrBytes {
        StrBytes::from_string(text.to_string())
    }

    #[test]
    fn produce_requests_walk_exactly_at_every_version() {
        let partition =
            |index| PartitionProduceData::default().with_index(index).with_records(Some(Bytes::from_static(b"batch")));
        let topic = |text: &str| {
            TopicProduceData::default()
                .with_name(TopicName(name(text)))
                .with_partition_data(vec![partition(0), partition(1)])
        };
        let request = ProduceRequest::default()
            .with_transactional_id(None)
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![topic("orders"), topic("payments")]);
        for version in versions(0) {
            walks_exactly(0, version, &request);
        }
    }
}
