//! A Kafka connection for tests: requests built and answers read with
//! `kafka-protocol`, over a blocking socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, MetadataRequest, RequestHeader, ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

pub struct KafkaConnection {
    pub stream: TcpStream,
    pub correlation: i32,
}

impl KafkaConnection {
    pub fn open(addr: SocketAddr) -> KafkaConnection {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        KafkaConnection { stream, correlation: 0 }
    }

    pub fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).unwrap();
    }

    /// Sends `request` at `version` and returns the decoded response.
    pub fn call<T: Encodable>(&mut self, api_key: ApiKey, version: i16, request: &T) -> ResponseKind {
        let correlation = self.send(api_key, version, request);
        self.receive(api_key, version, correlation).unwrap_or_else(|error| panic!("{api_key:?} v{version}: {error}"))
    }

    /// Creates `topic` with `partitions` partitions (CreateTopics v5) and
    /// checks it was created.
    pub fn create_topic(&mut self, topic: &str, partitions: i32) {
        let request = CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(text(topic)))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
        let ResponseKind::CreateTopics(created) = self.call(ApiKey::CreateTopics, 5, &request) else {
            panic!("not a CreateTopics answer")
        };
        assert_eq!(created.topics[0].error_code, 0, "creating {topic}");
    }

    /// The address of the broker leading `topic`'s partition 0.
    pub fn leader_of(&mut self, topic: &str) -> SocketAddr {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(text(topic))))]));
        let ResponseKind::Metadata(metadata) = self.call(ApiKey::Metadata, 12, &request) else {
            panic!("not a Metadata answer")
        };
        let leader = metadata.topics[0].partitions[0].leader_id;
        let port = metadata.brokers.iter().find(|broker| broker.node_id == leader).expect("the leader").port;
        SocketAddr::from(([127, 0, 0, 1], port as u16))
    }

    /// Sends `request` without waiting for its answer; returns its
    /// correlation id.
    pub fn send<T: Encodable>(&mut self, api_key: ApiKey, version: i16, request: &T) -> i32 {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(text("protocol-test")));
        let mut body = BytesMut::new();
        header.encode(&mut body, api_key.request_header_version(version)).unwrap();
        request.encode(&mut body, version).unwrap_or_else(|error| panic!("{api_key:?} v{version}: {error}"));
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.send_raw(&frame);
        self.correlation
    }

    /// Reads the answer to the request sent with `correlation` (answers
    /// come in order).
    pub fn receive(&mut self, api_key: ApiKey, version: i16, correlation: i32) -> std::io::Result<ResponseKind> {
        let mut response = self.read_frame()?;
        let header = ResponseHeader::decode(&mut response, api_key.response_header_version(version))
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        assert_eq!(header.correlation_id, correlation, "{api_key:?} v{version}");
        ResponseKind::decode(api_key, &mut response, version).map_err(|error| std::io::Error::other(error.to_string()))
    }

    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix)?;
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        self.stream.read_exact(&mut body)?;
        Ok(Bytes::from(body))
    }

    /// Whether the broker closed the connection (read returns end of stream).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}
