//! The client's error type: one small enum for everything a caller may have
//! to tell apart (retry, give up, fix the call).

use std::io;

use crate::protocol::wire::{ErrorCode, WireError};

/// What went wrong with a client operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O error: {0}")]
    Io(io::Error),
    /// The broker sent bytes that do not follow the protocol.
    #[error("protocol error: {0}")]
    Wire(WireError),
    /// The broker answered with an error code.
    #[error("broker error {code}: {message}")]
    Broker { code: ErrorCode, message: String },
    /// The connection closed (by either side) before the answer came.
    #[error("connection closed")]
    Closed,
    /// No answer within the request timeout. The request may still have
    /// taken effect on the broker.
    #[error("request timed out")]
    Timeout,
    /// The broker answered with something this client did not ask for or
    /// cannot handle.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
    #[error("no such topic: {0}")]
    NoSuchTopic(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// Whether the same operation may succeed if tried again later (after
    /// reconnecting or refreshing metadata). Note that retrying a produce that
    /// failed with `Timeout`, `Closed` or `Io` may append its records twice.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout => true,
            ClientError::Broker { code, .. } => code.is_retriable(),
            ClientError::Wire(_)
            | ClientError::UnexpectedResponse(_)
            | ClientError::NoSuchTopic(_)
            | ClientError::InvalidArgument(_) => false,
        }
    }

    /// The broker's error code, if the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn broker(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Broker { code, message: message.into() }
    }
}

// The wrapped errors are part of each message, so they are not also
// exposed as `source()`: a report that walks the chain (anyhow's `{:#}`)
// would print them twice.
impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> ClientError {
        ClientError::Io(error)
    }
}

impl From<WireError> for ClientError {
    fn from(error: WireError) -> ClientError {
        ClientError::Wire(error)
    }
}

/// One failure is often reported to many waiters (every call pending on a
/// connection that broke, every record of a batch that failed), so errors
/// must be clonable; `io::Error` is not, so it is rebuilt from its kind and
/// message.
impl Clone for ClientError {
    fn clone(&self) -> ClientError {
        match self {
            ClientError::Io(error) => ClientError::Io(io::Error::new(error.kind(), error.to_string())),
            ClientError::Wire(error) => ClientError::Wire(error.clone()),
            ClientError::Broker { code, message } => ClientError::Broker { code: *code, message: message.clone() },
            ClientError::Closed => ClientError::Closed,
            ClientError::Timeout => ClientError::Timeout,
            ClientError::UnexpectedResponse(message) => ClientError::UnexpectedResponse(message.clone()),
            ClientError::NoSuchTopic(topic) => ClientError::NoSuchTopic(topic.clone()),
            ClientError::InvalidArgument(message) => ClientError::InvalidArgument(message.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriability_follows_the_kind_of_failure() {
        assert!(ClientError::Closed.is_retriable());
        assert!(ClientError::Timeout.is_retriable());
        assert!(ClientError::Io(io::Error::other("reset")).is_retriable());
        assert!(ClientError::broker(ErrorCode::NOT_OWNER, "moved").is_retriable());
        assert!(!ClientError::broker(ErrorCode::INVALID_BATCH, "bad").is_retriable());
        assert!(!ClientError::NoSuchTopic("t".into()).is_retriable());
        assert!(!ClientError::Wire(WireError::FrameTooShort { len: 1 }).is_retriable());
    }

    #[test]
    fn clones_keep_kind_and_message() {
        let error = ClientError::Io(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset"));
        match error.clone() {
            ClientError::Io(copy) => {
                assert_eq!(copy.kind(), io::ErrorKind::ConnectionReset);
                assert_eq!(copy.to_string(), "peer reset");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(ClientError::broker(ErrorCode::TIMEOUT, "slow").clone().code(), Some(ErrorCode::TIMEOUT));
    }
}
