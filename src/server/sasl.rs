//! SASL logins on the server side: SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN,
//! through `rsasl`, checked against the credentials in the metadata.
//!
//! Both front doors use it the same way: [`Login::start`] with the
//! mechanism the client chose, then [`Login::step`] with each token it
//! sends, until the login is done or fails. The connection then answers a
//! failure after `auth.failure_delay_ms` and closes.
//!
//! An unknown user goes through the same exchange as a known one, with a
//! salt derived from the user name and a secret of this process, so a
//! client cannot tell from the answers (or from asking twice) whether a user
//! exists: both fail at the proof.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::io::Cursor;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechname::Mechname;
use rsasl::prelude::{SASLConfig, SASLServer, Session, SessionError, State};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::protocol::scram::{ScramCredential, ScramMechanism};
use crate::shard::metadata::Users;

/// Longest SASL token accepted: a SCRAM message or PLAIN's user, name and
/// password fit in far less.
pub const TOKEN_BYTES_MAX: usize = 8192;

/// Who a connection acts as, once logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub superuser: bool,
}

/// What a shard's listeners require (from the tuning's `[auth]`), and the
/// connections each principal holds open on the shard.
#[derive(Debug)]
pub struct AuthSetup {
    pub native: bool,
    pub kafka: bool,
    superusers: BTreeSet<String>,
    pub failure_delay: Duration,
    max_connections_per_principal: u32,
    produce_bytes_per_second: u64,
    fetch_bytes_per_second: u64,
    /// What each principal with an open connection uses: an entry per
    /// principal with at least one, so bounded by the shard's connection
    /// limit.
    connections: RefCell<HashMap<String, Rc<Usage>>>,
}

/// One principal's open connections and quota buckets on a shard.
#[derive(Debug)]
pub struct Usage {
    connections: std::cell::Cell<u32>,
    pub produce: Option<RefCell<Bucket>>,
    pub fetch: Option<RefCell<Bucket>>,
}

/// A byte-rate quota: a second's worth of bytes may go at once; beyond it
/// the principal waits until the rate has paid for what it used.
#[derive(Debug)]
pub struct Bucket {
    per_second: u64,
    /// Bytes that may go now without waiting; negative when in debt.
    tokens: f64,
    refilled: std::time::Instant,
}

impl Bucket {
    fn new(per_second: u64) -> Bucket {
        Bucket { per_second, tokens: per_second as f64, refilled: std::time::Instant::now() }
    }

    /// Takes `bytes`; returns how long the answer should be held back.
    pub fn take(&mut self, bytes: u64, now: std::time::Instant) -> Duration {
        let rate = self.per_second as f64;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // A huge request waits at most this long per answer (well within
            // the request timeout); its debt carries over to the next.
            Duration::from_secs_f64((-self.tokens / rate).min(THROTTLE_MAX.as_secs_f64()))
        }
    }
}

/// The longest one answer is held back for a quota.
pub const THROTTLE_MAX: Duration = Duration::from_secs(5);

/// One logged-in connection's place in its principal's count; given back
/// when the connection closes.
#[derive(Debug)]
pub struct PrincipalSlot {
    setup: Rc<AuthSetup>,
    user: String,
    pub usage: Rc<Usage>,
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let count = self.usage.connections.get().saturating_sub(1);
        self.usage.connections.set(count);
        if count == 0 {
            self.setup.connections.borrow_mut().remove(&self.user);
        }
    }
}

impl AuthSetup {
    pub fn new(config: &AuthConfig) -> AuthSetup {
        AuthSetup {
            native: config.native,
            kafka: config.kafka,
            superusers: config.superusers.iter().cloned().collect(),
            failure_delay: Duration::from_millis(config.failure_delay_ms),
            max_connections_per_principal: config.max_connections_per_principal,
            produce_bytes_per_second: config.produce_bytes_per_second,
            fetch_bytes_per_second: config.fetch_bytes_per_second,
            connections: RefCell::new(HashMap::new()),
        }
    }

    /// Counts a connection logged in as `principal`; refused when the
    /// principal already holds its limit on this shard.
    pub fn admit(self: &Rc<Self>, principal: &Principal) -> Result<PrincipalSlot, LoginError> {
        let mut connections = self.connections.borrow_mut();
        let bucket = |rate: u64| (rate > 0 && !principal.superuser).then(|| RefCell::new(Bucket::new(rate)));
        let usage = connections.entry(principal.user.clone()).or_insert_with(|| {
            Rc::new(Usage {
                connections: std::cell::Cell::new(0),
                produce: bucket(self.produce_bytes_per_second),
                fetch: bucket(self.fetch_bytes_per_second),
            })
        });
        let (count, max) = (usage.connections.get(), self.max_connections_per_principal);
        if max > 0 && count >= max && !principal.superuser {
            return Err(LoginError::TooManyConnections(principal.user.clone(), max));
        }
        usage.connections.set(count + 1);
        Ok(PrincipalSlot { setup: Rc::clone(self), user: principal.user.clone(), usage: Rc::clone(usage) })
    }

    pub fn enabled(&self) -> bool {
        self.native || self.kafka
    }

    pub fn principal(&self, user: String) -> Principal {
        let superuser = self.superusers.contains(&user);
        Principal { user, superuser }
    }

    /// The mechanisms a listener offers: PLAIN only under TLS, since it
    /// sends the password itself.
    pub fn mechanisms(tls: bool) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = ScramMechanism::ALL.iter().map(|mechanism| mechanism.name()).collect();
        if tls {
            names.push(PLAIN);
        }
        names
    }
}

const PLAIN: &str = "PLAIN";

/// Why a login failed. The client is told only that it failed (and, for
/// a mechanism, which ones exist); the reason goes to the broker's log.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("mechanism {0:?} is not offered here (offered: {1})")]
    UnsupportedMechanism(String, String),
    #[error("a {0}-byte SASL token is over the limit of {TOKEN_BYTES_MAX}")]
    TokenTooLarge(usize),
    #[error("the exchange is already over")]
    Finished,
    #[error("wrong user name or password")]
    Rejected,
    #[error("SASL exchange: {0}")]
    Exchange(String),
    #[error("user {0} already has {1} connections to this shard (auth.max_connections_per_principal)")]
    TooManyConnections(String, u32),
    /// rsasl panicked on the token; the shape check should rule this out,
    /// and the fuzz target checks it never happens.
    #[error("the SASL library failed on this token")]
    Panicked,
}

/// One login in progress.
pub struct Login {
    session: Session<LoggedIn>,
    /// SCRAM's messages are checked for shape before rsasl parses them.
    scram: bool,
    /// For the librdkafka compatibility path: the SCRAM hash, the users,
    /// and the first two messages of the exchange.
    mechanism: Option<ScramMechanism>,
    users: Arc<Users>,
    client_first_bare: Vec<u8>,
    server_first: Vec<u8>,
    /// Tokens taken so far.
    steps: u32,
    finished: bool,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("finished", &self.finished).finish_non_exhaustive()
    }
}

/// Where a login stands after a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this token and wait for the client's next one.
    Continue(Vec<u8>),
    /// Logged in as `user`; send `token` (possibly empty) as the last answer.
    Done { token: Vec<u8>, user: String },
}

impl Login {
    /// Starts a login with `mechanism` against `users`. `tls`: whether the
    /// connection is encrypted (PLAIN needs it).
    pub fn start(mechanism: &str, users: Arc<Users>, tls: bool) -> Result<Login, LoginError> {
        let offered = AuthSetup::mechanisms(tls);
        let unsupported = || LoginError::UnsupportedMechanism(mechanism.to_string(), offered.join(", "));
        let name = offered.iter().find(|name| name.eq_ignore_ascii_case(mechanism)).ok_or_else(unsupported)?;
        let scram = ScramMechanism::from_name(name);
        let callback = Lookup { users: Arc::clone(&users), scram };
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(callback)
            .map_err(|error| LoginError::Exchange(error.to_string()))?;
        let mechname = Mechname::parse(name.as_bytes()).map_err(|error| LoginError::Exchange(error.to_string()))?;
        let session = SASLServer::<LoggedIn>::new(config)
            .start_suggested(mechname)
            .map_err(|error| LoginError::Exchange(error.to_string()))?;
        Ok(Login {
            session,
            scram: scram.is_some(),
            mechanism: scram,
            users,
            client_first_bare: Vec::new(),
            server_first: Vec::new(),
            steps: 0,
            finished: false,
        })
    }

    /// Takes the client's next token.
    pub fn step(&mut self, token: &[u8]) -> Result<Step, LoginError> {
        if self.finished {
            return Err(LoginError::Finished);
        }
        if token.len() > TOKEN_BYTES_MAX {
            return Err(LoginError::TokenTooLarge(token.len()));
        }
        let first = self.steps == 0;
        self.steps += 1;
        if self.scram {
            if let Err(error) = check_scram_shape(token, first) {
                self.finished = true;
                return Err(error);
            }
            if first {
                // The GS2 header is everything up to the second comma.
                let bare = token.iter().enumerate().filter(|(_, byte)| **byte == b',').nth(1);
                self.client_first_bare = bare.map_or_else(Vec::new, |(at, _)| token[at + 1..].to_vec());
            } else if let Some(step) = self.repeated_nonce_final(token) {
                self.finished = true;
                return step;
            }
        }
        let mut out = Cursor::new(Vec::new());
        // rsasl 2.3's SCRAM parser slices attributes without checking their
        // length; the shape check above rules that out, and a panic it did
        // not foresee fails this login instead of the shard's thread.
        let stepped =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.session.step(Some(token), &mut out)));
        let Ok(stepped) = stepped else {
            self.finished = true;
            return Err(LoginError::Panicked);
        };
        let state = stepped.map_err(|error| {
            // A failed exchange is over: rsasl's session may not be stepped again.
            self.finished = true;
            match error {
                SessionError::ValidationError(_) => LoginError::Rejected,
                other => LoginError::Exchange(other.to_string()),
            }
        })?;
        match state {
            State::Running => {
                let out = out.into_inner();
                if first {
                    self.server_first = out.clone();
                }
                Ok(Step::Continue(out))
            }
            State::Finished(_) => {
                self.finished = true;
                match self.session.validation() {
                    Some(Ok(user)) => Ok(Step::Done { token: out.into_inner(), user }),
                    // No validation: the proof was wrong (or the user unknown).
                    Some(Err(())) | None => Err(LoginError::Rejected),
                }
            }
        }
    }
}

impl Login {
    /// librdkafka before 2.6.1 repeats its client nonce in the final
    /// message (`r=<client><client><server>` where RFC 5802 wants
    /// `r=<client><server>`; librdkafka pull request 4895), and signs what
    /// it sent. Kafka 3.8.1 to 3.9 accept that (the nonce still ends with
    /// the one the broker issued); Debian's kcat links such a librdkafka.
    /// rsasl checks the nonce strictly and rebuilds the signed message
    /// from its own parts, so this one form is verified here, with the
    /// same HMAC and hash rsasl uses: `None` for every other message.
    fn repeated_nonce_final(&self, token: &[u8]) -> Option<Result<Step, LoginError>> {
        let mechanism = self.mechanism?;
        let attribute = |message: &[u8], key: u8| -> Option<Vec<u8>> {
            message
                .split(|byte| *byte == b',')
                .find(|part| part.len() >= 2 && part[0] == key && part[1] == b'=')
                .map(|part| part[2..].to_vec())
        };
        let client_nonce = attribute(&self.client_first_bare, b'r')?;
        let issued = attribute(&self.server_first, b'r')?;
        let sent = attribute(token, b'r')?;
        if sent != [client_nonce.as_slice(), issued.as_slice()].concat() {
            return None;
        }
        let proof_at = token.windows(3).rposition(|window| window == b",p=")?;
        let (without_proof, proof) = (&token[..proof_at], &token[proof_at + 3..]);
        let auth_message =
            [self.client_first_bare.as_slice(), b",", self.server_first.as_slice(), b",", without_proof].concat();
        let user = String::from_utf8(attribute(&self.client_first_bare, b'n')?).ok()?;
        let known = self.users.get(&user).and_then(|credentials| credentials.get(&mechanism));
        let credential = known.cloned().unwrap_or_else(|| stand_in(mechanism, &user));
        let verified = match mechanism {
            ScramMechanism::Sha256 => verify_final::<sha2::Sha256>(&credential, &auth_message, proof),
            ScramMechanism::Sha512 => verify_final::<sha2::Sha512>(&credential, &auth_message, proof),
        };
        Some(match verified {
            Some(server_signature) if known.is_some() => {
                use base64::Engine;
                let token = format!("v={}", base64::engine::general_purpose::STANDARD.encode(server_signature));
                Ok(Step::Done { token: token.into_bytes(), user })
            }
            _ => Err(LoginError::Rejected),
        })
    }
}

/// RFC 5802's check of a client proof over `auth_message`: the server
/// signature when the proof holds.
fn verify_final<D>(credential: &ScramCredential, auth_message: &[u8], proof: &[u8]) -> Option<Vec<u8>>
where
    D: sha2::Digest + sha2::digest::core_api::BlockSizeUser + Clone,
{
    use base64::Engine;
    use hmac::{Mac, SimpleHmac};
    let proof = base64::engine::general_purpose::STANDARD.decode(proof).ok()?;
    let mut signature = <SimpleHmac<D> as Mac>::new_from_slice(&credential.stored_key).ok()?;
    signature.update(auth_message);
    let signature = signature.finalize().into_bytes();
    if proof.len() != signature.len() {
        return None;
    }
    let client_key: Vec<u8> = proof.iter().zip(signature.iter()).map(|(a, b)| a ^ b).collect();
    let stored_key = D::digest(&client_key);
    if !bool::from(stored_key.as_slice().ct_eq(&credential.stored_key)) {
        return None;
    }
    let mut server = <SimpleHmac<D> as Mac>::new_from_slice(&credential.server_key).ok()?;
    server.update(auth_message);
    Some(server.finalize().into_bytes().to_vec())
}

/// Checks a client's SCRAM message has the shape RFC 5802 gives it before
/// rsasl parses it: comma-separated attributes `x=value`, and in the first
/// message a GS2 header (`n`, `y` or `p=name`, then empty or `a=authzid`).
fn check_scram_shape(token: &[u8], first: bool) -> Result<(), LoginError> {
    let malformed = |what: &str| Err(LoginError::Exchange(format!("malformed SCRAM message: {what}")));
    let mut parts = token.split(|&byte| byte == b',');
    if first {
        let flag = parts.next().unwrap_or_default();
        if !(flag == b"n" || flag == b"y" || (flag.len() > 2 && flag.starts_with(b"p="))) {
            return malformed("bad channel binding flag");
        }
        let Some(authzid) = parts.next() else { return malformed("no GS2 header") };
        if !(authzid.is_empty() || authzid.starts_with(b"a=")) {
            return malformed("bad authorization id");
        }
    }
    let mut attributes = 0;
    for part in parts {
        if part.len() < 2 || part[1] != b'=' {
            return malformed("an attribute is not x=value");
        }
        attributes += 1;
    }
    if attributes < 2 {
        return malformed("too few attributes");
    }
    Ok(())
}

/// The validation a finished login yields: the user it logged in as.
struct LoggedIn;

impl Validation for LoggedIn {
    type Value = Result<String, ()>;
}

/// Looks credentials up for rsasl's SCRAM and PLAIN servers.
struct Lookup {
    users: Arc<Users>,
    /// The SCRAM hash of this login; `None` for PLAIN.
    scram: Option<ScramMechanism>,
}

impl Lookup {
    /// The credential SCRAM checks `user` against: the stored one, or for a
    /// user without one a stand-in that no password matches.
    fn credential(&self, mechanism: ScramMechanism, user: &str) -> ScramCredential {
        match self.users.get(user).and_then(|credentials| credentials.get(&mechanism)) {
            Some(credential) => credential.clone(),
            None => stand_in(mechanism, user),
        }
    }

    /// PLAIN: the password against any of the user's SCRAM credentials.
    fn plain_matches(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(credentials) => {
                credentials.iter().any(|(mechanism, credential)| credential.matches_password(*mechanism, password))
            }
            None => {
                // The same work as for a known user.
                let _ = stand_in(ScramMechanism::Sha512, user).matches_password(ScramMechanism::Sha512, password);
                false
            }
        }
    }
}

/// A credential for a user who has none: a salt derived from the name and
/// a secret of this process (the same salt every time, as for a real user),
/// keys that are hashes no password derives to.
fn stand_in(mechanism: ScramMechanism, user: &str) -> ScramCredential {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).expect("the kernel's random source is available");
        secret
    });
    let derive = |label: &[u8]| Sha512::new().chain_update(secret).chain_update(label).chain_update(user).finalize();
    let bytes = mechanism.output_bytes();
    ScramCredential {
        iterations: crate::protocol::scram::ITERATIONS_MIN,
        salt: derive(b"salt")[..32].to_vec(),
        stored_key: derive(b"stored")[..bytes].to_vec(),
        server_key: derive(b"server")[..bytes].to_vec(),
    }
}

impl SessionCallback for Lookup {
    fn callback(&self, _: &SessionData, context: &Context, request: &mut Request) -> Result<(), SessionError> {
        let (Some(mechanism), Some(user)) = (self.scram, context.get_ref::<AuthId>()) else {
            return Ok(());
        };
        if request.is::<ScramStoredPassword>() {
            let credential = self.credential(mechanism, user);
            request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                credential.iterations,
                &credential.salt,
                &credential.stored_key,
                &credential.server_key,
            ))?;
        }
        Ok(())
    }

    fn validate(&self, _: &SessionData, context: &Context, validate: &mut Validate<'_>) -> Result<(), ValidationError> {
        let user = context.get_ref::<AuthId>().unwrap_or_default();
        // Acting as another user is not supported.
        let authzid_ok = context.get_ref::<AuthzId>().is_none_or(|authzid| authzid.is_empty() || authzid == user);
        let accepted = authzid_ok
            && match self.scram {
                // rsasl validates only after the client's proof matched.
                Some(_) => self.users.contains_key(user),
                None => context.get_ref::<Password>().is_some_and(|password| self.plain_matches(user, password)),
            };
        validate.with::<LoggedIn, _>(|| Ok(if accepted { Ok(user.to_string()) } else { Err(()) }))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rsasl::prelude::SASLClient;

    use super::*;
    use crate::protocol::scram::random_salt;

    /// Alice, with a credential for each mechanism (derived once: PBKDF2 is
    /// slow in a debug build).
    fn users() -> Arc<Users> {
        static USERS: OnceLock<Arc<Users>> = OnceLock::new();
        let users = USERS.get_or_init(|| {
            let mut users = Users::new();
            for mechanism in ScramMechanism::ALL {
                let credential = ScramCredential::from_password(mechanism, b"secret", &random_salt(), 4096).unwrap();
                users.entry("alice".to_string()).or_default().insert(mechanism, credential);
            }
            Arc::new(users)
        });
        Arc::clone(users)
    }

    /// Runs a whole exchange with rsasl's client: the user logged in as, or
    /// why it failed.
    fn login(mechanism: &str, user: &str, password: &str, tls: bool) -> Result<String, LoginError> {
        let mut server = Login::start(mechanism, users(), tls)?;
        let config = SASLConfig::with_credentials(None, user.to_string(), password.to_string()).unwrap();
        let name = Mechname::parse(mechanism.as_bytes()).unwrap();
        let mut client = SASLClient::new(config).start_suggested(&[name]).unwrap();
        let mut out = Cursor::new(Vec::new());
        client.step(None, &mut out).unwrap();
        loop {
            match server.step(out.get_ref())? {
                Step::Continue(token) => {
                    out = Cursor::new(Vec::new());
                    client.step(Some(&token), &mut out).map_err(|error| LoginError::Exchange(error.to_string()))?;
                }
                Step::Done { token, user } => {
                    if !token.is_empty() {
                        // The client checks the server's signature too.
                        let mut last = Cursor::new(Vec::new());
                        client.step(Some(&token), &mut last).unwrap();
                    }
                    return Ok(user);
                }
            }
        }
    }

    #[test]
    fn scram_logins_succeed_with_the_password_and_fail_without_it() {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            assert_eq!(login(mechanism, "alice", "secret", false).unwrap(), "alice");
            assert!(matches!(login(mechanism, "alice", "wrong", false), Err(LoginError::Rejected)), "{mechanism}");
            assert!(matches!(login(mechanism, "mallory", "secret", false), Err(LoginError::Rejected)), "{mechanism}");
        }
    }

    /// librdkafka before 2.6.1: the final message repeats the client nonce
    /// and is signed as sent. The test builds that message the way
    /// librdkafka does, from the RFC's formulas.
    #[test]
    fn librdkafkas_repeated_nonce_is_verified_as_sent() {
        use base64::Engine;
        use hmac::{Mac, SimpleHmac};
        let b64 = base64::engine::general_purpose::STANDARD;
        let attempt = |password: &[u8]| {
            let mut login = Login::start("SCRAM-SHA-256", users(), false).unwrap();
            let (bare, client_nonce) = ("n=alice,r=abcdefghijklmnop", "abcdefghijklmnop");
            let Step::Continue(server_first) = login.step(format!("n,,{bare}").as_bytes()).unwrap() else {
                panic!("a server-first message");
            };
            let server_first = String::from_utf8(server_first).unwrap();
            let field =
                |key: &str| server_first.split(',').find_map(|part| part.strip_prefix(key)).unwrap().to_string();
            let (nonce, salt, iterations) =
                (field("r="), b64.decode(field("s=")).unwrap(), field("i=").parse().unwrap());
            let salted = ScramMechanism::Sha256.salt_password(password, &salt, iterations);
            let hmac = |key: &[u8], data: &[u8]| {
                let mut mac = <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            };
            let client_key = hmac(&salted, b"Client Key");
            let stored_key = sha2::Sha256::digest(&client_key).to_vec();
            let without_proof = format!("c=biws,r={client_nonce}{nonce}");
            let auth_message = format!("{bare},{server_first},{without_proof}");
            let signature = hmac(&stored_key, auth_message.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
            let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
            let step = login.step(format!("{without_proof},p={}", b64.encode(proof)).as_bytes());
            (step, format!("v={}", b64.encode(server_signature)))
        };
        let (step, expected) = attempt(b"secret");
        assert_eq!(step.unwrap(), Step::Done { token: expected.into_bytes(), user: "alice".into() });
        assert!(matches!(attempt(b"wrong").0, Err(LoginError::Rejected)));
    }

    #[test]
    fn plain_needs_tls_and_checks_the_password_against_the_scram_credentials() {
        assert!(matches!(login("PLAIN", "alice", "secret", false), Err(LoginError::UnsupportedMechanism(..))));
        assert_eq!(login("PLAIN", "alice", "secret", true).unwrap(), "alice");
        assert!(matches!(login("PLAIN", "alice", "secre", true), Err(LoginError::Rejected)));
        assert!(matches!(login("PLAIN", "bob", "secret", true), Err(LoginError::Rejected)));
    }

    /// A client learns nothing about which users exist: an unknown user's
    /// salt is stable across attempts, like a real one's.
    #[test]
    fn unknown_users_get_a_stable_salt() {
        let first_answer = |user: &str| {
            let mut login = Login::start("SCRAM-SHA-256", users(), false).unwrap();
            let first = format!("n,,n={user},r=abcdefghijklmnop");
            match login.step(first.as_bytes()).unwrap() {
                Step::Continue(token) => String::from_utf8(token).unwrap(),
                other => panic!("{other:?}"),
            }
        };
        let salt = |answer: String| answer.split(',').find(|part| part.starts_with("s=")).unwrap().to_string();
        assert_eq!(salt(first_answer("mallory")), salt(first_answer("mallory")));
        assert_ne!(salt(first_answer("mallory")), salt(first_answer("eve")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever a client sends, in one token or several, the login
        /// fails or succeeds; rsasl is never reached with a message it
        /// would panic on.
        #[test]
        fn any_tokens_fail_cleanly(
            mechanism in proptest::sample::select(vec!["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]),
            tokens in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(b"nyrpcsivma=,\0x1".to_vec()), 0..24),
                1..4,
            ),
        ) {
            let mut login = Login::start(mechanism, users(), true).unwrap();
            for token in &tokens {
                match login.step(token) {
                    Err(LoginError::Panicked) => proptest::prop_assert!(false, "rsasl panicked on {token:?}"),
                    Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }

    #[test]
    fn each_principal_holds_at_most_its_connections() {
        let config =
            AuthConfig { superusers: vec!["root".into()], max_connections_per_principal: 2, ..AuthConfig::default() };
        let setup = Rc::new(AuthSetup::new(&config));
        let alice = setup.principal("alice".into());
        let first = setup.admit(&alice).unwrap();
        let second = setup.admit(&alice).unwrap();
        assert!(matches!(setup.admit(&alice), Err(LoginError::TooManyConnections(_, 2))));
        assert!(setup.admit(&setup.principal("bob".into())).is_ok(), "other principals are not affected");
        drop(first);
        let third = setup.admit(&alice).unwrap();
        let root = setup.principal("root".into());
        let roots: Vec<_> = (0..5).map(|_| setup.admit(&root).unwrap()).collect();
        drop((second, third, roots));
        assert!(setup.connections.borrow().is_empty(), "closed connections leave no entries");
    }

    #[test]
    fn a_bucket_lets_a_seconds_worth_through_then_holds_back() {
        let start = std::time::Instant::now();
        let mut bucket = Bucket::new(1000);
        bucket.refilled = start;
        assert_eq!(bucket.take(1000, start), Duration::ZERO, "a second's worth at once");
        assert_eq!(bucket.take(500, start), Duration::from_millis(500), "then the rate pays for the rest");
        let later = start + Duration::from_secs(2);
        assert_eq!(bucket.take(400, later), Duration::ZERO, "refilled, capped at a second's worth");
        assert_eq!(bucket.take(1_000_000_000, later), THROTTLE_MAX, "an answer waits at most THROTTLE_MAX");
    }

    #[test]
    fn garbage_fails_cleanly() {
        for token in [&b""[..], b"n,,", b"x,,n=alice,r=1", &[0xff; 64], &vec![b'a'; TOKEN_BYTES_MAX + 1]] {
            let mut login = Login::start("SCRAM-SHA-512", users(), false).unwrap();
            assert!(login.step(token).is_err(), "{token:?}");
        }
        let mut login = Login::start("PLAIN", users(), true).unwrap();
        assert!(login.step(b"\0alice").is_err());
        assert!(matches!(login.step(b"\0alice\0secret"), Err(LoginError::Finished)));
    }
}
