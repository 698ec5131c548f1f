//! TLS for the client: the certificate authorities it trusts and the name
//! it expects on the broker's certificate (`rustls` through
//! `futures-rustls`, with the `ring` provider).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::rustls;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::error::ClientError;

/// How the client speaks TLS to the broker. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl ClientTls {
    /// Trusts the PEM certificates in `ca_file` and expects `server_name`
    /// (a DNS name or an IP address) on the broker's certificate.
    pub fn from_ca_file(ca_file: &Path, server_name: &str) -> Result<ClientTls, ClientError> {
        ClientTls::build(ca_file, server_name, None)
    }

    /// Like [`from_ca_file`](Self::from_ca_file), presenting the client
    /// certificate chain in `cert_file` with the key in `key_file` (mutual
    /// TLS: the broker takes the certificate's name as the principal).
    pub fn with_client_certificate(
        ca_file: &Path,
        server_name: &str,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<ClientTls, ClientError> {
        ClientTls::build(ca_file, server_name, Some((cert_file, key_file)))
    }

    fn build(ca_file: &Path, server_name: &str, client: Option<(&Path, &Path)>) -> Result<ClientTls, ClientError> {
        let invalid = |what: String| ClientError::InvalidArgument(what);
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|error| invalid(format!("reading {}: {error}", ca_file.display())))?;
        for cert in certs {
            let cert = cert.map_err(|error| invalid(format!("reading {}: {error}", ca_file.display())))?;
            roots.add(cert).map_err(|error| invalid(format!("a certificate in {}: {error}", ca_file.display())))?;
        }
        if roots.is_empty() {
            return Err(invalid(format!("{} holds no PEM certificate", ca_file.display())));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid(format!("TLS versions: {error}")))?
            .with_root_certificates(roots);
        let config = match client {
            None => config.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
                    .and_then(|certs| certs.collect())
                    .map_err(|error| invalid(format!("reading {}: {error}", cert_file.display())))?;
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|error| invalid(format!("reading {}: {error}", key_file.display())))?;
                config.with_client_auth_cert(chain, key).map_err(|error| {
                    invalid(format!(
                        "the client certificate {} and key {}: {error}",
                        cert_file.display(),
                        key_file.display()
                    ))
                })?
            }
        };
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|error| invalid(format!("TLS server name {server_name:?}: {error}")))?;
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// Runs the handshake over `stream`, within `timeout` (zero: none).
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<futures_rustls::client::TlsStream<TcpStream>, ClientError> {
        let connector = TlsConnector::from(Arc::clone(&self.config));
        let handshake = connector.connect(self.server_name.clone(), stream);
        let done = if timeout.is_zero() {
            handshake.await
        } else {
            match glommio::timer::timeout(timeout, async { Ok(handshake.await) }).await {
                Ok(done) => done,
                Err(_) => return Err(ClientError::Timeout),
            }
        };
        done.map_err(ClientError::Io)
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Equal when they are the same configuration for the same name.
impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}
