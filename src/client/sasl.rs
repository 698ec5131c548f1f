//! The client side of a SASL login (SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN)
//! through `rsasl`: run on each new connection before its first request,
//! when [`ConnectionOptions::sasl`](super::ConnectionOptions) is set.

use std::io::Cursor;

use rsasl::mechname::Mechname;
use rsasl::prelude::{SASLClient, SASLConfig, State};

use crate::protocol::wire::{Request, Response, SaslAuthenticateRequest};

use super::connection::Connection;
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

/// Logs `connection` in. The broker's final message is checked too: with
/// SCRAM it proves the broker knows the user's credential.
pub(crate) async fn login(connection: &Connection, credentials: &SaslCredentials) -> Result<(), ClientError> {
    let invalid = |what: String| ClientError::InvalidArgument(format!("SASL login: {what}"));
    let config = SASLConfig::with_credentials(None, credentials.user.clone(), credentials.password.clone())
        .map_err(|error| invalid(error.to_string()))?;
    let mechname = Mechname::parse(credentials.mechanism.as_bytes()).map_err(|error| invalid(error.to_string()))?;
    let mut session =
        SASLClient::new(config).start_suggested(&[mechname]).map_err(|error| invalid(error.to_string()))?;
    let mut token = Cursor::new(Vec::new());
    session.step(None, &mut token).map_err(|error| invalid(error.to_string()))?;
    // SCRAM takes two round trips, PLAIN one; a broker that asks for more
    // is not following the mechanism.
    for _ in 0..4 {
        let request = Request::SaslAuthenticate(SaslAuthenticateRequest {
            mechanism: credentials.mechanism.clone(),
            token: token.into_inner(),
        });
        let answer = match connection.call(&request, &[]).await? {
            (Response::SaslAuthenticate(answer), _) => answer,
            (other, _) => return Err(super::cluster::unexpected("SaslAuthenticate", &other)),
        };
        if !answer.error.is_ok() {
            return Err(ClientError::Broker { code: answer.error, message: answer.message });
        }
        token = Cursor::new(Vec::new());
        let state = if answer.token.is_empty() && answer.done {
            State::Finished(rsasl::prelude::MessageSent::No)
        } else {
            session.step(Some(&answer.token), &mut token).map_err(|error| {
                ClientError::UnexpectedResponse(format!("the broker's SASL answer did not verify: {error}"))
            })?
        };
        if answer.done {
            return Ok(());
        }
        if state.is_finished() && token.get_ref().is_empty() {
            return Err(ClientError::UnexpectedResponse("the SASL exchange ended without a login".into()));
        }
    }
    Err(ClientError::UnexpectedResponse("the broker's SASL exchange did not end".into()))
}
