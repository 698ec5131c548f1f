//! SCRAM credentials (RFC 5802, RFC 7677): what the broker stores for a
//! user instead of a password, and how it is derived. The derivation runs
//! through `rsasl`'s SCRAM tools and the `sha2` digests; nothing here is
//! hand-rolled cryptography.
//!
//! A credential is the salt and iteration count a client salts its password
//! with, and two keys derived from that salted password: the stored key
//! (`H(HMAC(salted, "Client Key"))`, which checks a client's proof) and the
//! server key (`HMAC(salted, "Server Key")`, which signs the server's
//! answer). Neither reveals the password or lets anyone log in with it.

use rsasl::mechanisms::scram::tools;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The fewest iterations a credential may use (Kafka's minimum too).
pub const ITERATIONS_MIN: u32 = 4096;
/// The most: Kafka's maximum; more only makes every login slower.
pub const ITERATIONS_MAX: u32 = 16384;
/// Salt bytes the broker and its tools generate.
pub const SALT_BYTES: usize = 32;
/// Longest salt accepted from a client (Kafka's AlterUserScramCredentials).
pub const SALT_BYTES_MAX: usize = 1024;
/// Longest user name.
pub const USER_NAME_BYTES_MAX: usize = 256;

/// The SCRAM hash functions served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
    }

    /// Kafka's number for it (DescribeUserScramCredentials and
    /// AlterUserScramCredentials): 1 is SHA-256, 2 is SHA-512.
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(kind: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|mechanism| mechanism.kafka_type() == kind)
    }

    /// Bytes of the hash's output: a salted password's length.
    pub fn output_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }

    /// PBKDF2 of `password` (Hi() in RFC 5802).
    pub fn salt_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut out = Default::default();
                tools::hash_password::<Sha256>(password, iterations, salt, &mut out);
                out.to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut out = Default::default();
                tools::hash_password::<Sha512>(password, iterations, salt, &mut out);
                out.to_vec()
            }
        }
    }

    /// The stored key and server key of a salted password.
    fn keys(self, salted_password: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match self {
            ScramMechanism::Sha256 => {
                let (client_key, server_key) = tools::derive_keys::<Sha256>(salted_password);
                (Sha256::digest(client_key).to_vec(), server_key.to_vec())
            }
            ScramMechanism::Sha512 => {
                let (client_key, server_key) = tools::derive_keys::<Sha512>(salted_password);
                (Sha512::digest(client_key).to_vec(), server_key.to_vec())
            }
        }
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("iterations must be {ITERATIONS_MIN} to {ITERATIONS_MAX}, not {0}")]
    Iterations(u32),
    #[error("a salt needs 1 to {SALT_BYTES_MAX} bytes, not {0}")]
    Salt(usize),
    #[error("a {mechanism} salted password has {expected} bytes, not {got}")]
    SaltedPassword { mechanism: &'static str, expected: usize, got: usize },
    #[error("invalid user name: {0}")]
    UserName(String),
}

/// One user's secret for one mechanism.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys stay out of logs.
        f.debug_struct("ScramCredential").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// From a password the client salted itself (Kafka's
    /// AlterUserScramCredentials sends this, never the password).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salt: &[u8],
        iterations: u32,
        salted_password: &[u8],
    ) -> Result<ScramCredential, CredentialError> {
        check_parameters(salt, iterations)?;
        if salted_password.len() != mechanism.output_bytes() {
            return Err(CredentialError::SaltedPassword {
                mechanism: mechanism.name(),
                expected: mechanism.output_bytes(),
                got: salted_password.len(),
            });
        }
        let (stored_key, server_key) = mechanism.keys(salted_password);
        Ok(ScramCredential { iterations, salt: salt.to_vec(), stored_key, server_key })
    }

    /// From a password: salts it, then derives the keys.
    pub fn from_password(
        mechanism: ScramMechanism,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<ScramCredential, CredentialError> {
        check_parameters(salt, iterations)?;
        let salted = mechanism.salt_password(password, salt, iterations);
        ScramCredential::from_salted_password(mechanism, salt, iterations, &salted)
    }

    /// Whether `password` is this credential's (for SASL PLAIN), compared
    /// in constant time.
    pub fn matches_password(&self, mechanism: ScramMechanism, password: &[u8]) -> bool {
        let salted = mechanism.salt_password(password, &self.salt, self.iterations);
        let (stored_key, _) = mechanism.keys(&salted);
        bool::from(stored_key.ct_eq(&self.stored_key))
    }
}

fn check_parameters(salt: &[u8], iterations: u32) -> Result<(), CredentialError> {
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        return Err(CredentialError::Iterations(iterations));
    }
    if salt.is_empty() || salt.len() > SALT_BYTES_MAX {
        return Err(CredentialError::Salt(salt.len()));
    }
    Ok(())
}

/// A user name SCRAM can carry: 1 to 256 bytes, no control characters,
/// and none of `,` and `=` (SCRAM escapes them; refusing them keeps every
/// client's escaping out of the question).
pub fn validate_user_name(name: &str) -> Result<(), CredentialError> {
    let refuse = |why: &str| Err(CredentialError::UserName(format!("{name:?}: {why}")));
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX {
        return refuse(&format!("needs 1 to {USER_NAME_BYTES_MAX} bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == ',' || c == '=') {
        return refuse("control characters, ',' and '=' are not allowed");
    }
    Ok(())
}

/// A fresh random salt.
pub fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; SALT_BYTES];
    getrandom::getrandom(&mut salt).expect("the kernel's random source is available");
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 7677's example user: password "pencil", salt
    /// W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations. The expected keys were
    /// computed independently with Python's hashlib and hmac.
    #[test]
    fn keys_match_an_independent_derivation() {
        let salt = [0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81];
        let sha256 = ScramCredential::from_password(ScramMechanism::Sha256, b"pencil", &salt, 4096).unwrap();
        assert_eq!(hex(&sha256.stored_key), "586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6");
        assert_eq!(hex(&sha256.server_key), "c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5");
        let sha512 = ScramCredential::from_password(ScramMechanism::Sha512, b"pencil", &salt, 4096).unwrap();
        assert_eq!(
            hex(&sha512.stored_key),
            "e8002e6f7d3ae446119b216933644dc2a2be7869eb918b8459b5e7d7d2ec1260\
             6aceef106825cd735170a675fd3611f684affad1dce3f43a0ee43bd590e1dbbe"
        );
        assert!(sha256.matches_password(ScramMechanism::Sha256, b"pencil"));
        assert!(!sha256.matches_password(ScramMechanism::Sha256, b"pencil "));
    }

    #[test]
    fn parameters_out_of_range_are_refused() {
        let salt = random_salt();
        assert_eq!(
            ScramCredential::from_password(ScramMechanism::Sha256, b"p", &salt, 4095),
            Err(CredentialError::Iterations(4095))
        );
        assert_eq!(
            ScramCredential::from_password(ScramMechanism::Sha256, b"p", &[], 4096),
            Err(CredentialError::Salt(0))
        );
        let short = ScramCredential::from_salted_password(ScramMechanism::Sha512, &salt, 4096, &[0; 32]);
        assert!(matches!(short, Err(CredentialError::SaltedPassword { expected: 64, got: 32, .. })));
        assert!(validate_user_name("alice").is_ok());
        for bad in ["", "a,b", "a=b", "tab\there"] {
            assert!(validate_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_user_name(&"x".repeat(257)).is_err());
    }
}
