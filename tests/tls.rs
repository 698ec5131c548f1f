//! TLS on the listeners, against the real binary: a certificate authority
//! and a broker certificate made for the test (rcgen), kcat and
//! confluent-kafka over SSL round-tripping messages, a client that does not
//! trust the certificate refused, plaintext to a TLS port and a handshake
//! left half-done both closed (not hung) while the broker keeps serving, and
//! the native protocol over TLS.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringbroker::protocol::wire::Response;
use support::broker::BrokerProcess;
use support::certs::{certificates, TlsPing};
use support::clients::{clients_script, kcat, python, run_client};
use support::temp_dir;

/// A broker with TLS on its native and Kafka listeners and a short frame
/// deadline.
fn tls_broker(dir: &Path) -> (BrokerProcess, PathBuf) {
    let (ca, cert, key) = certificates(dir);
    let tuning = dir.join("tls.toml");
    let text = format!(
        "[network]\nframe_timeout_ms = 500\n\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    );
    std::fs::write(&tuning, text).unwrap();
    let broker = BrokerProcess::start(&dir.join("data"), &["--tuning", tuning.to_str().unwrap()]);
    (broker, ca)
}

/// Whether the broker closes `stream` (rather than leaving it hanging)
/// within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return started.elapsed() < within,
        }
    }
}

#[test]
fn kcat_produces_and_consumes_over_tls_and_an_untrusting_client_is_refused() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let (broker, ca) = tls_broker(dir.path());
    let bootstrap = broker.kafka_addr.unwrap().to_string();
    let ssl = ["-X", "security.protocol=ssl", "-X", &format!("ssl.ca.location={}", ca.display())];
    let lines: Vec<String> = (0..50).map(|i| format!("k{i}|over TLS {i}")).collect();
    let produce = [&["-b", &bootstrap, "-P", "-t", "secret", "-p", "0", "-K", "|"][..], &ssl[..]].concat();
    let sent = run_client(&kcat, &produce, &(lines.join("\n") + "\n"));
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let consume =
        [&["-b", &bootstrap, "-C", "-t", "secret", "-p", "0", "-o", "beginning", "-e", "-f", "%k|%s\n"][..], &ssl[..]]
            .concat();
    let read = run_client(&kcat, &consume, "");
    assert_eq!(String::from_utf8_lossy(&read.stdout).lines().collect::<Vec<_>>(), lines, "byte for byte");

    // Without the CA the broker's certificate is not trusted: kcat fails.
    let untrusting = ["-b", &bootstrap, "-L", "-X", "security.protocol=ssl", "-m", "5"];
    let refused = run_client(&kcat, &untrusting, "");
    assert!(!refused.status.success(), "a certificate no CA vouches for must be refused");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("certificate verify failed"), "refused for its certificate: {said}");
    // The broker is unharmed.
    let again = run_client(&kcat, &[&["-b", &bootstrap, "-L"][..], &ssl[..]].concat(), "");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(broker.terminate().success());
}

#[test]
fn plaintext_and_stalled_handshakes_are_closed_and_others_still_served() {
    let dir = temp_dir();
    let (broker, ca) = tls_broker(dir.path());
    let kafka = broker.kafka_addr.unwrap();
    // A plaintext Kafka request to the TLS port: closed, not left hanging.
    let mut plain = TcpStream::connect(kafka).unwrap();
    plain.write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap();
    assert!(closed_within(&mut plain, Duration::from_secs(5)), "plaintext to a TLS port is closed");
    // A connection that never finishes its handshake is cut by the frame
    // deadline (500 ms here).
    let mut stalled = TcpStream::connect(SocketAddr::new(broker.addr.ip(), broker.shard_ports[0])).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(5)), "a stalled handshake is cut");
    assert!(started.elapsed() >= Duration::from_millis(400), "by the frame deadline, not at once");
    // The native protocol over TLS still answers.
    let addr = SocketAddr::new(broker.addr.ip(), broker.shard_ports[1]);
    assert_eq!(TlsPing::connect(addr, &ca).unwrap().ping().unwrap(), Response::Pong);
    // Failures are counted (the metrics listener stays plain HTTP).
    let failures = metric_sum(&scrape(broker.metrics_addr.unwrap()), "ringbroker_tls_handshake_failures_total");
    assert!(failures >= 2, "both failed handshakes counted: {failures}");
    assert!(broker.terminate().success());
}

/// Many connections that start a TLS handshake and stall: no more than the
/// per-address limit are held at once (the rest are closed at once), each
/// held one is cut by the frame deadline, and afterwards the broker serves
/// a proper client.
#[test]
fn stalled_handshakes_stay_within_the_connection_limit() {
    let dir = temp_dir();
    let (ca, cert, key) = certificates(dir.path());
    let tuning = dir.path().join("tight.toml");
    let text = format!(
        "[network]\nframe_timeout_ms = 500\nmax_connections_per_ip = 8\nevict_idle_after_ms = 60000\n\n\
         [tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"
    );
    std::fs::write(&tuning, text).unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let addr = SocketAddr::new(broker.addr.ip(), broker.shard_ports[0]);
    // Half a ClientHello's record header, then nothing.
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(&[0x16, 0x03, 0x01]).unwrap();
            stream
        })
        .collect();
    for (index, stream) in stalled.iter_mut().enumerate() {
        assert!(closed_within(stream, Duration::from_secs(5)), "stalled connection {index} is closed");
    }
    let refused = metric_sum(&scrape(broker.metrics_addr.unwrap()), "ringbroker_connections_refused_total");
    assert!(refused >= 12, "at most 8 of the 20 were held at once (refused: {refused})");
    assert_eq!(TlsPing::connect(addr, &ca).unwrap().ping().unwrap(), Response::Pong);
    assert!(broker.terminate().success());
}

fn metric_sum(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The text of one `/metrics` scrape.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn confluent_kafka_produces_and_consumes_over_tls() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let (broker, ca) = tls_broker(dir.path());
    let script = clients_script();
    let bootstrap = broker.kafka_addr.unwrap().to_string();
    let output = run_client(
        &python,
        &[script.to_str().unwrap(), "confluent-ssl", &bootstrap, "secret", ca.to_str().unwrap()],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a report")).unwrap();
    assert_eq!(report["delivered"], 100, "{report}");
    assert_eq!(report["values"].as_array().map(Vec::len), Some(100), "{report}");
    assert!(broker.terminate().success());
}

/// The CLI (the native Rust client) over TLS: it produces and consumes
/// with `--tls-ca`; without it, or trusting another CA, it fails with an
/// error instead of hanging, and the broker serves on.
#[test]
fn the_cli_speaks_tls_with_its_ca_and_fails_cleanly_without() {
    let dir = temp_dir();
    let (broker, ca) = tls_broker(dir.path());
    let tls = ["--tls-ca", ca.to_str().unwrap()];
    support::cli(broker.addr, &[&tls[..], &["topic", "create", "sealed", "--partitions", "2"][..]].concat(), "");
    let lines: String = (0..20).map(|i| format!("k{i}:sealed {i}\n")).collect();
    support::cli(broker.addr, &[&tls[..], &["produce", "sealed", "--key-separator", ":"][..]].concat(), &lines);
    let consume = ["consume", "sealed", "--from", "earliest", "--idle-exit-ms", "500"];
    let read = support::cli(broker.addr, &[&tls[..], &consume[..]].concat(), "");
    assert_eq!(read.lines().count(), 20, "{read}");

    let fails = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
            .args(["--broker", &broker.addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let plain = fails(&["topic", "list"]);
    assert!(plain.contains("the broker answered with TLS"), "{plain}");
    let other_dir = temp_dir();
    let (other_ca, _, _) = certificates(other_dir.path());
    let untrusted = fails(&["--tls-ca", other_ca.to_str().unwrap(), "topic", "list"]);
    assert!(untrusted.contains("certificate"), "refused for its certificate: {untrusted}");
    let listed = support::cli(broker.addr, &[&tls[..], &["topic", "list"][..]].concat(), "");
    assert!(listed.contains("sealed"), "the broker serves on: {listed}");
    assert!(broker.terminate().success());
}
