//! Certificates made for a test with rcgen.

use std::path::{Path, PathBuf};

/// A CA and a broker certificate for 127.0.0.1 and localhost, written as
/// PEM files into `dir`: (ca, cert, key).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ringbroker test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(rcgen::DnType::CommonName, "ringbroker");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("broker.pem"), dir.join("broker.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A certificate authority made for a test, issuing server and client
/// certificates as PEM files.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The CA's own certificate (what clients or the broker trust).
    pub pem: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        TestCa { cert, key, pem }
    }

    /// A certificate for `common_name` (and the loopback addresses), valid
    /// now, or expired since 2020 when `expired`: (cert, key) files named
    /// after `stem` in `dir`.
    pub fn issue(&self, dir: &Path, stem: &str, common_name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let (params, key) = leaf(common_name, expired);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        write_pair(dir, stem, &cert, &key)
    }
}

/// A self-signed certificate for `common_name`: (cert, key) files.
pub fn self_signed(dir: &Path, stem: &str, common_name: &str) -> (PathBuf, PathBuf) {
    let (params, key) = leaf(common_name, false);
    let cert = params.self_signed(&key).unwrap();
    write_pair(dir, stem, &cert, &key)
}

fn leaf(common_name: &str, expired: bool) -> (rcgen::CertificateParams, rcgen::KeyPair) {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    (params, key)
}

fn write_pair(dir: &Path, stem: &str, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> (PathBuf, PathBuf) {
    let paths = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    paths
}

/// A native-protocol connection over TLS (a blocking rustls client that
/// trusts `ca`), for sending Pings.
pub struct TlsPing {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    next_id: u32,
}

use futures_rustls::rustls;

impl TlsPing {
    /// Connects and completes the handshake; an error if it fails.
    pub fn connect(addr: std::net::SocketAddr, ca: &Path) -> std::io::Result<TlsPing> {
        Ok(TlsPing { stream: tls_connect(addr, ca)?, next_id: 1 })
    }

    /// Sends a Ping and returns the response.
    pub fn ping(&mut self) -> std::io::Result<ringbroker::protocol::wire::Response> {
        use ringbroker::protocol::wire::{self, FrameKind, Request};
        use std::io::{Read, Write};
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, FrameKind::Request, id, &Request::Ping, &[]).unwrap();
        self.stream.write_all(&frame)?;
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix)?;
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        self.stream.read_exact(&mut body)?;
        let (head, header, _) = wire::split_frame(bytes::BytesMut::from(&body[..])).unwrap();
        assert_eq!(head.request_id, id);
        Ok(wire::decode_header(&header).unwrap())
    }
}

/// A TLS connection to `addr` (as 127.0.0.1) trusting `ca`, handshake done.
fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = std::net::TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// `GET /metrics` over HTTPS trusting `ca`: the whole response.
pub fn https_scrape(addr: std::net::SocketAddr, ca: &Path) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = tls_connect(addr, ca)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => Ok(text),
        // The server closes without a TLS close_notify after the response.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !text.is_empty() => Ok(text),
        Err(error) => Err(error),
    }
}
