//! Server-side SASL logins (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN) on
//! arbitrary tokens: every exchange ends in an error or a login, and the
//! SASL library is never handed a message it panics on.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ringbroker::protocol::scram::{ScramCredential, ScramMechanism};
use ringbroker::server::sasl::{Login, LoginError};
use ringbroker::shard::metadata::Users;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let mechanism = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"][usize::from(choice % 3)];
    let mut users = Users::new();
    let credential = ScramCredential::from_password(ScramMechanism::Sha256, b"secret", b"salt", 4096).unwrap();
    users.entry("alice".into()).or_default().insert(ScramMechanism::Sha256, credential);
    let mut login = Login::start(mechanism, Arc::new(users), true).unwrap();
    // Tokens are separated by 0xFF, which no SCRAM or PLAIN message holds.
    for token in rest.split(|&byte| byte == 0xff) {
        match login.step(token) {
            Err(LoginError::Panicked) => panic!("the SASL library panicked on {token:?}"),
            Err(_) => break,
            Ok(_) => {}
        }
    }
});
