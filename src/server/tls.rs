//! TLS for the listeners: the server configuration built from the PEM
//! files the tuning names (`rustls` through `futures-rustls`, with the
//! `ring` provider). Connections read and write a `runtime::stream::Stream`.

use std::path::Path;
use std::sync::Arc;

use futures_rustls::rustls;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads the certificate chain and key and builds the server side of TLS
/// (TLS 1.2 and 1.3, no client certificates).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect())
        .map_err(|error| format!("reading the certificates in {}: {error}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|error| format!("reading the private key in {}: {error}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| {
            format!("the certificate and key in {} and {}: {error}", cert_file.display(), key_file.display())
        })?;
    Ok(Arc::new(config))
}
