//! TLS for the listeners: the server configuration built from the PEM
//! files the tuning names (`rustls` through `futures-rustls`, with the
//! `ring` provider). Connections read and write a `runtime::stream::Stream`.
//!
//! The certificate and key sit behind [`TlsKeys`], which every handshake
//! asks for them: [`TlsKeys::reload`] (on SIGHUP) swaps in what the files
//! hold now, so new connections get the new certificate while open ones
//! keep their sessions. With a client CA configured, clients present
//! certificates it signed (mutual TLS); the certificate's common name (or
//! its first DNS or email name) is the client's principal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_rustls::rustls;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ClientAuth;

/// Why the TLS certificate, key or client CA did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificates in {}: {source}", .file.display())]
    ReadCertificates { file: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("reading the private key in {}: {source}", .file.display())]
    ReadKey { file: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("the certificate and key in {} and {}: {source}", .cert_file.display(), .key_file.display())]
    KeyMismatch { cert_file: PathBuf, key_file: PathBuf, source: rustls::Error },
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
    #[error("reading the client CA in {}: {source}", .file.display())]
    ReadClientCa { file: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("the client CA in {}: {source}", .file.display())]
    ClientCa { file: PathBuf, source: rustls::Error },
    #[error("the client CA in {}: {source}", .file.display())]
    ClientVerifier { file: PathBuf, source: rustls::server::VerifierBuilderError },
}

/// The broker's certificate and key, replaceable while it runs.
#[derive(Debug)]
pub struct TlsKeys {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Reloads that took, and that failed (the old certificate stayed).
    reloaded: AtomicU64,
    reload_failures: AtomicU64,
}

impl TlsKeys {
    /// Reads the certificate chain and key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<TlsKeys>, TlsError> {
        let current = RwLock::new(read_key(cert_file, key_file)?);
        Ok(Arc::new(TlsKeys {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current,
            reloaded: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// Reads the files again; new handshakes use what they hold from now
    /// on. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = match read_key(&self.cert_file, &self.key_file) {
            Ok(fresh) => fresh,
            Err(error) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
        };
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        self.reloaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// (reloads that took, reloads that failed) so far.
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloaded.load(Ordering::Relaxed), self.reload_failures.load(Ordering::Relaxed))
    }
}

impl ResolvesServerCert for TlsKeys {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        Some(current)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect())
        .map_err(|source| TlsError::ReadCertificates { file: cert_file.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|source| TlsError::ReadKey { file: key_file.to_path_buf(), source })?;
    let mismatch = |source: rustls::Error| TlsError::KeyMismatch {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        source,
    };
    let key = CertifiedKey::from_der(certs, key, &provider()).map_err(mismatch)?;
    Ok(Arc::new(key))
}

/// The server side of TLS (TLS 1.2 and 1.3) with `keys`, and with client
/// certificates checked against `client_ca` when one is given.
pub fn server_config(
    keys: Arc<TlsKeys>,
    client_ca: Option<&Path>,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?;
    let builder = match (client_ca, client_auth) {
        (None, _) | (_, ClientAuth::None) => builder.with_no_client_auth(),
        (Some(ca), auth) => {
            let mut roots = rustls::RootCertStore::empty();
            let unreadable = |source| TlsError::ReadClientCa { file: ca.to_path_buf(), source };
            for cert in CertificateDer::pem_file_iter(ca).map_err(unreadable)? {
                roots
                    .add(cert.map_err(unreadable)?)
                    .map_err(|source| TlsError::ClientCa { file: ca.to_path_buf(), source })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier =
                verifier.build().map_err(|source| TlsError::ClientVerifier { file: ca.to_path_buf(), source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(Arc::new(builder.with_cert_resolver(keys)))
}

/// The principal (user name) a verified client certificate names: its
/// subject's common name, else its first DNS or email name.
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Some(cn) = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_string());
    }
    let names = parsed.subject_alternative_name().ok().flatten()?;
    names.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(name) | GeneralName::RFC822Name(name) => Some(name.to_string()),
        _ => None,
    })
}
