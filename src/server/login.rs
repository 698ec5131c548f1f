//! A connection's login: whether its listener requires one, where the SASL
//! exchange stands, and who the client is once it is done. The front doors
//! ask it what to do with each request that arrives before the login ends.
//!
//! Kafka: ApiVersions, then SaslHandshake (v1) naming a mechanism, then
//! SaslAuthenticate until the exchange is done. Native: SaslAuthenticate
//! requests carrying the mechanism and each token, as the first requests.
//! Any other request before the login ends closes the connection. A failed
//! login is answered after `auth.failure_delay_ms`, whatever failed, and
//! the connection closes after the answer.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ResponseKind, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::access::Access;
use super::kafka::Parsed;
use super::kafka_codes::codes;
use super::sasl::{AuthSetup, Login, LoginError, Principal, PrincipalSlot, Step};
use crate::protocol::wire::{
    ErrorCode, SaslAuthenticateRequest as NativeRequest, SaslAuthenticateResponse as NativeResponse,
};
use crate::shard::{Counters, Shard};

enum State {
    /// The listener requires no login.
    Open,
    /// Kafka: waiting for SaslHandshake. Native: for the first token.
    Awaiting,
    /// Kafka: the mechanism SaslHandshake chose, before its first token.
    Chosen(&'static str),
    InProgress {
        mechanism: String,
        login: Box<Login>,
    },
    LoggedIn(Principal),
    /// The login failed; the connection closes after the answer.
    Failed,
}

/// One connection's login.
pub(crate) struct LoginGate {
    state: RefCell<State>,
    /// The logged-in principal's place in its connection count.
    slot: RefCell<Option<PrincipalSlot>>,
    /// The rights of a connection whose login is over, made once (requests
    /// come in the millions; the login only once).
    access: RefCell<Option<Rc<Access>>>,
    /// The client's address (ACLs may name hosts).
    peer: std::net::IpAddr,
    /// Whether the connection is TLS (PLAIN needs it).
    tls: bool,
    setup: Rc<AuthSetup>,
}

/// What to do with a Kafka request.
pub(crate) enum KafkaGate {
    /// Serve it as usual.
    Serve,
    /// Answer with this; `failed`: after the failure delay, then close.
    Answer { response: Box<ResponseKind>, failed: bool },
    /// Close without an answer (a request before the login ended).
    Close(String),
}

impl LoginGate {
    /// `certificate_user`: who a verified client certificate names (mutual
    /// TLS); that is the client's login, on any listener.
    pub(crate) fn new(
        required: bool,
        tls: bool,
        setup: Rc<AuthSetup>,
        peer: std::net::IpAddr,
        certificate_user: Option<String>,
    ) -> LoginGate {
        let mut slot = None;
        let state = match certificate_user.map(|user| setup.principal(user)) {
            Some(principal) => match setup.admit(&principal) {
                Ok(admitted) => {
                    slot = Some(admitted);
                    State::LoggedIn(principal)
                }
                Err(error) => {
                    tracing::info!(%error, "certificate login refused");
                    State::Failed
                }
            },
            None if required => State::Awaiting,
            None => State::Open,
        };
        LoginGate { state: RefCell::new(state), slot: RefCell::new(slot), access: RefCell::new(None), peer, tls, setup }
    }

    /// Whether requests are served: no login required, or logged in.
    pub(crate) fn is_open(&self) -> bool {
        matches!(*self.state.borrow(), State::Open | State::LoggedIn(_))
    }

    /// Who the client logged in as (`None` on a listener without logins).
    pub(crate) fn principal(&self) -> Option<Principal> {
        match &*self.state.borrow() {
            State::LoggedIn(principal) => Some(principal.clone()),
            _ => None,
        }
    }

    /// What the client may do (checked against the ACLs once any listener
    /// requires a login). Asked for only once the login is over (or none
    /// is required), so it is made once.
    pub(crate) fn access(&self) -> Rc<Access> {
        if let Some(access) = self.access.borrow().as_ref() {
            return Rc::clone(access);
        }
        let usage = self.slot.borrow().as_ref().map(|slot| Rc::clone(&slot.usage));
        let access = Rc::new(Access::new(self.principal().as_ref(), self.peer, self.setup.enabled(), usage));
        if self.is_open() {
            *self.access.borrow_mut() = Some(Rc::clone(&access));
        }
        access
    }

    pub(crate) fn failure_delay(&self) -> std::time::Duration {
        self.setup.failure_delay
    }

    /// Decides what a Kafka request does while the login is not done.
    pub(crate) fn kafka(&self, shard: &Shard, parsed: &Parsed) -> KafkaGate {
        if self.is_open() || parsed.api_key == ApiKey::ApiVersions {
            return KafkaGate::Serve;
        }
        match parsed.api_key {
            ApiKey::SaslHandshake => {
                let Ok(request) = SaslHandshakeRequest::decode(&mut parsed.body.clone(), parsed.version) else {
                    return KafkaGate::Close("an undecodable SaslHandshake".into());
                };
                if parsed.version == 0 {
                    // The raw token exchange that follows v0 is not served.
                    let response = SaslHandshakeResponse::default().with_error_code(codes::UNSUPPORTED_VERSION);
                    return KafkaGate::Answer {
                        response: Box::new(ResponseKind::SaslHandshake(response)),
                        failed: true,
                    };
                }
                let response = Box::new(ResponseKind::SaslHandshake(self.handshake(&request)));
                KafkaGate::Answer { response, failed: false }
            }
            ApiKey::SaslAuthenticate => {
                let Ok(request) = SaslAuthenticateRequest::decode(&mut parsed.body.clone(), parsed.version) else {
                    return KafkaGate::Close("an undecodable SaslAuthenticate".into());
                };
                let chosen = match &*self.state.borrow() {
                    State::Chosen(mechanism) => Some(*mechanism),
                    State::InProgress { .. } => None,
                    _ => return KafkaGate::Close("SaslAuthenticate before SaslHandshake".into()),
                };
                let (response, failed) = match self.step(shard, chosen, &request.auth_bytes) {
                    Ok(token) => (SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(token)), false),
                    Err(error) => {
                        let response = SaslAuthenticateResponse::default()
                            .with_error_code(codes::SASL_AUTHENTICATION_FAILED)
                            .with_error_message(Some(StrBytes::from_string(client_message(&error))));
                        (response, true)
                    }
                };
                KafkaGate::Answer { response: Box::new(ResponseKind::SaslAuthenticate(response)), failed }
            }
            other => KafkaGate::Close(format!("{other:?} before the SASL login")),
        }
    }

    fn handshake(&self, request: &SaslHandshakeRequest) -> SaslHandshakeResponse {
        let offered = AuthSetup::mechanisms(self.tls);
        let response = SaslHandshakeResponse::default()
            .with_mechanisms(offered.iter().map(|name| StrBytes::from_static_str(name)).collect());
        let mut state = self.state.borrow_mut();
        if !matches!(*state, State::Awaiting) {
            return response.with_error_code(codes::ILLEGAL_SASL_STATE);
        }
        match offered.iter().find(|name| name.eq_ignore_ascii_case(request.mechanism.as_str())) {
            Some(name) => {
                *state = State::Chosen(name);
                response
            }
            None => response.with_error_code(codes::UNSUPPORTED_SASL_MECHANISM),
        }
    }

    /// A native SaslAuthenticate: the answer, and whether the login failed
    /// (the connection answers after the delay, then closes).
    pub(crate) fn native(&self, shard: &Shard, request: &NativeRequest) -> (NativeResponse, bool) {
        let mechanism = match &*self.state.borrow() {
            State::Awaiting => Some(request.mechanism.clone()),
            State::InProgress { mechanism, .. } if mechanism.eq_ignore_ascii_case(&request.mechanism) => None,
            State::InProgress { .. } => {
                let message = "the mechanism changed during the login".to_string();
                return (native_failure(ErrorCode::AUTHENTICATION_FAILED, message), true);
            }
            State::Open | State::LoggedIn(_) => {
                let message = "already logged in, or this listener requires no login".to_string();
                return (native_failure(ErrorCode::INVALID_REQUEST, message), false);
            }
            State::Chosen(_) | State::Failed => {
                return (native_failure(ErrorCode::AUTHENTICATION_FAILED, "the login failed".into()), true);
            }
        };
        match self.step(shard, mechanism.as_deref(), &request.token) {
            Ok(token) => {
                let done = self.is_open();
                (NativeResponse { error: ErrorCode::NONE, message: String::new(), token, done }, false)
            }
            Err(LoginError::UnsupportedMechanism(asked, offered)) => {
                let message = format!("mechanism {asked:?} is not offered here (offered: {offered})");
                (native_failure(ErrorCode::UNSUPPORTED_SASL_MECHANISM, message), true)
            }
            Err(error) => (native_failure(ErrorCode::AUTHENTICATION_FAILED, client_message(&error)), true),
        }
    }

    /// Takes the client's next token (`start`: the mechanism of a login
    /// that begins with it) and returns the token to answer with.
    fn step(&self, shard: &Shard, start: Option<&str>, token: &[u8]) -> Result<Vec<u8>, LoginError> {
        let counters = shard.counters();
        let result = self.advance(shard, start, token);
        match &result {
            Ok(_) if self.is_open() => Counters::add(&counters.sasl_logins, 1),
            Ok(_) => {}
            Err(error) => {
                Counters::add(&counters.sasl_failures, 1);
                tracing::info!(%error, "SASL login failed");
                *self.state.borrow_mut() = State::Failed;
            }
        }
        result
    }

    fn advance(&self, shard: &Shard, start: Option<&str>, token: &[u8]) -> Result<Vec<u8>, LoginError> {
        let mut state = self.state.borrow_mut();
        if let Some(mechanism) = start {
            let login = Login::start(mechanism, shard.metadata().users.clone(), self.tls)?;
            *state = State::InProgress { mechanism: mechanism.to_string(), login: Box::new(login) };
        }
        let State::InProgress { login, .. } = &mut *state else {
            return Err(LoginError::Finished);
        };
        match login.step(token)? {
            Step::Continue(token) => Ok(token),
            Step::Done { token, user } => {
                let principal = self.setup.principal(user);
                *self.slot.borrow_mut() = Some(self.setup.admit(&principal)?);
                tracing::info!(user = %principal.user, "SASL login");
                *state = State::LoggedIn(principal);
                Ok(token)
            }
        }
    }
}

fn native_failure(error: ErrorCode, message: String) -> NativeResponse {
    NativeResponse { error, message, token: Vec::new(), done: false }
}

/// What a client is told about a failed login: not which part failed.
fn client_message(error: &LoginError) -> String {
    match error {
        LoginError::UnsupportedMechanism(..) | LoginError::TokenTooLarge(_) | LoginError::TooManyConnections(..) => {
            error.to_string()
        }
        _ => "authentication failed: wrong user name or password, or a malformed exchange".into(),
    }
}
