//! Kafka's error codes as the broker answers with them, and the native
//! codes they translate (shared by the Kafka front door's modules).

use crate::protocol::wire::ErrorCode;

/// Kafka error codes the broker answers with (Kafka's own numbers).
pub mod codes {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const INVALID_REQUEST: i16 = 42;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const RESOURCE_NOT_FOUND: i16 = 91;
    pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;
}

/// A native error code as a Kafka one.
pub fn kafka_code(code: ErrorCode) -> i16 {
    match code {
        ErrorCode::NONE => codes::NONE,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION => codes::UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::NOT_OWNER | ErrorCode::SHUTTING_DOWN => codes::NOT_LEADER_OR_FOLLOWER,
        ErrorCode::INVALID_BATCH => codes::CORRUPT_MESSAGE,
        ErrorCode::BATCH_TOO_LARGE | ErrorCode::FRAME_TOO_LARGE => codes::MESSAGE_TOO_LARGE,
        ErrorCode::OFFSET_OUT_OF_RANGE => codes::OFFSET_OUT_OF_RANGE,
        ErrorCode::TOPIC_EXISTS => codes::TOPIC_ALREADY_EXISTS,
        ErrorCode::INVALID_REQUEST => codes::INVALID_REQUEST,
        ErrorCode::STORAGE_FULL | ErrorCode::PARTITION_FAILED => codes::KAFKA_STORAGE_ERROR,
        ErrorCode::TIMEOUT => codes::REQUEST_TIMED_OUT,
        ErrorCode::INVALID_TOPIC_NAME => codes::INVALID_TOPIC_EXCEPTION,
        ErrorCode::INVALID_PARTITION_COUNT | ErrorCode::TOO_MANY_PARTITIONS => codes::INVALID_PARTITIONS,
        ErrorCode::UNKNOWN_MEMBER => codes::UNKNOWN_MEMBER_ID,
        ErrorCode::STALE_GENERATION => codes::ILLEGAL_GENERATION,
        ErrorCode::NOT_COORDINATOR => codes::NOT_COORDINATOR,
        ErrorCode::GROUP_NOT_EMPTY => codes::NON_EMPTY_GROUP,
        ErrorCode::INVALID_GROUP => codes::INVALID_GROUP_ID,
        ErrorCode::UNKNOWN_GROUP => codes::GROUP_ID_NOT_FOUND,
        ErrorCode::UNSUPPORTED_VERSION => codes::UNSUPPORTED_VERSION,
        ErrorCode::OUT_OF_ORDER_SEQUENCE => codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::PRODUCER_FENCED => codes::INVALID_PRODUCER_EPOCH,
        ErrorCode::DUPLICATE_SEQUENCE => codes::DUPLICATE_SEQUENCE_NUMBER,
        ErrorCode::INVALID_CONFIG => codes::INVALID_CONFIG,
        ErrorCode::AUTHENTICATION_FAILED => codes::SASL_AUTHENTICATION_FAILED,
        ErrorCode::UNSUPPORTED_SASL_MECHANISM => codes::UNSUPPORTED_SASL_MECHANISM,
        ErrorCode::NOT_AUTHORIZED => codes::CLUSTER_AUTHORIZATION_FAILED,
        ErrorCode::INVALID_CREDENTIAL => codes::UNACCEPTABLE_CREDENTIAL,
        ErrorCode::UNKNOWN_CREDENTIAL => codes::RESOURCE_NOT_FOUND,
        _ => codes::UNKNOWN_SERVER_ERROR,
    }
}
