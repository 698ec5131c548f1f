//! The client side of a SASL login (SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN)
//! through `rsasl`: run on each new connection before its first request,
//! when [`ConnectionOptions::sasl`](super::ConnectionOptions) is set.

use std::io::Cursor;

use rsasl::mechname::Mechname;
use rsasl::prelude::{SASLClient, SASLConfig, State};

use crate::protocol::wire::{Request, Response, SaslAuthenticateRequest};

use super::error::ClientError;

/// Who to log in as, and with which mechanism.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    /// `SCRAM-SHA-256`, `SCRAM-SHA-512` or `PLAIN` (PLAIN only over TLS).
    pub mechanism: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs and error messages.
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The client's side of one login, driven by the connection.
pub(crate) struct ClientLogin {
    session: rsasl::prelude::Session,
}

impl ClientLogin {
    /// Starts a login; returns it and the first token to send.
    pub(crate) fn start(credentials: &SaslCredentials) -> Result<(ClientLogin, Vec<u8>), ClientError> {
        let invalid = |what: String| ClientError::InvalidArgument(format!("SASL login: {what}"));
        let config = SASLConfig::with_credentials(None, credentials.user.clone(), credentials.password.clone())
            .map_err(|error| invalid(error.to_string()))?;
        let mechname = Mechname::parse(credentials.mechanism.as_bytes()).map_err(|error| invalid(error.to_string()))?;
        let mut session =
            SASLClient::new(config).start_suggested(&[mechname]).map_err(|error| invalid(error.to_string()))?;
        let mut token = Cursor::new(Vec::new());
        session.step(None, &mut token).map_err(|error| invalid(error.to_string()))?;
        Ok((ClientLogin { session }, token.into_inner()))
    }

    /// Takes the broker's token; returns the next one to send (empty when
    /// the exchange is over on this side). With SCRAM the broker's last
    /// token proves it knows the user's credential.
    pub(crate) fn step(&mut self, token: &[u8]) -> Result<(Vec<u8>, bool), ClientError> {
        let mut out = Cursor::new(Vec::new());
        let state = self.session.step(Some(token), &mut out).map_err(|error| {
            ClientError::UnexpectedResponse(format!("the broker's SASL answer did not verify: {error}"))
        })?;
        Ok((out.into_inner(), state == State::Running))
    }
}

/// Builds one login step's request.
pub(crate) fn request(credentials: &SaslCredentials, token: Vec<u8>) -> Request {
    Request::SaslAuthenticate(SaslAuthenticateRequest { mechanism: credentials.mechanism.clone(), token })
}

/// The answer to a login step, or the broker's refusal.
pub(crate) fn answer(response: Response) -> Result<crate::protocol::wire::SaslAuthenticateResponse, ClientError> {
    match response {
        Response::SaslAuthenticate(answer) if answer.error.is_ok() => Ok(answer),
        Response::SaslAuthenticate(answer) => Err(ClientError::Broker { code: answer.error, message: answer.message }),
        other => Err(ClientError::UnexpectedResponse(format!(
            "expected a SaslAuthenticate answer ({})",
            other.error_code().name()
        ))),
    }
}
