//! Key rotation and mutual TLS against the real binary: SIGHUP swaps in a
//! new certificate for new connections (on /metrics too, served over HTTPS)
//! while an open one keeps working (and a broken file leaves the old
//! certificate in place); a client
//! certificate names the client's principal, which the ACLs then judge;
//! expired and self-signed client certificates are refused while the
//! broker serves others.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringbroker::protocol::wire::Response;
use support::broker::BrokerProcess;
use support::certs::{https_scrape, self_signed, TestCa, TlsPing};
use support::clients::{kcat, run_client};
use support::temp_dir;

fn sighup(broker: &BrokerProcess) {
    let status = Command::new("kill").args(["-HUP", &broker.pid().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits until `condition` holds (at most 10 s).
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_rotates_the_certificate_without_dropping_connections() {
    let dir = temp_dir();
    let (old_ca, new_ca) = (TestCa::new(dir.path(), "old"), TestCa::new(dir.path(), "new"));
    let (cert, key) = old_ca.issue(dir.path(), "broker", "ringbroker", false);
    let tuning = dir.path().join("tls.toml");
    std::fs::write(&tuning, format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nmetrics = true\n")).unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let addr = broker.addr;
    let mut open = TlsPing::connect(addr, &old_ca.pem).unwrap();
    assert_eq!(open.ping().unwrap(), Response::Pong);
    // /metrics is HTTPS too (tls.metrics), with the same certificate.
    let metrics = broker.metrics_addr.unwrap();
    let scrape = https_scrape(metrics, &old_ca.pem).unwrap();
    assert!(scrape.starts_with("HTTP/1.1 200") && scrape.contains("ringbroker_"), "{scrape}");
    assert!(TlsPing::connect(addr, &new_ca.pem).is_err(), "the new CA does not vouch for the old certificate");

    // Rotate: the files now hold a certificate from the new CA.
    new_ca.issue(dir.path(), "broker", "ringbroker", false);
    sighup(&broker);
    eventually("the new certificate", || TlsPing::connect(addr, &new_ca.pem).is_ok());
    assert!(TlsPing::connect(addr, &old_ca.pem).is_err(), "new connections get the new certificate");
    assert_eq!(open.ping().unwrap(), Response::Pong, "an open connection keeps working");
    assert!(https_scrape(metrics, &new_ca.pem).unwrap().starts_with("HTTP/1.1 200"), "and /metrics rotates too");

    let reloads = |result: &str| {
        let scrape = https_scrape(metrics, &new_ca.pem).unwrap();
        let line = format!("ringbroker_tls_reloads_total{{result=\"{result}\"}} ");
        scrape.lines().find_map(|l| l.strip_prefix(line.as_str())?.parse::<u64>().ok()).unwrap()
    };
    assert_eq!((reloads("ok"), reloads("failed")), (1, 0));

    // A file that does not load leaves the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    sighup(&broker);
    eventually("the failed reload", || reloads("failed") == 1);
    assert_eq!(TlsPing::connect(addr, &new_ca.pem).unwrap().ping().unwrap(), Response::Pong);
    assert!(broker.terminate().success());
}

/// `ringbroker --user admin ...` over TLS, with the admin password.
fn admin(broker: &BrokerProcess, ca: &Path, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", &broker.addr.to_string(), "--tls-ca", ca.to_str().unwrap(), "--user", "admin"])
        .args(args)
        .env("RINGBROKER_PASSWORD", "admin-pw")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn client_certificates_name_the_principal_and_bad_ones_are_refused() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let (server_ca, client_ca) = (TestCa::new(dir.path(), "server"), TestCa::new(dir.path(), "client"));
    let (cert, key) = server_ca.issue(dir.path(), "broker", "ringbroker", false);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut create = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["user", "create", "admin", "--data-dir", data.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    create.stdin.take().unwrap().write_all(b"admin-pw\n").unwrap();
    assert!(create.wait().unwrap().success());
    let tuning = dir.path().join("mtls.toml");
    let text = format!(
        "[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nclient_ca_file = {:?}\nclient_auth = \"optional\"\n\n\
         [auth]\nnative = true\nkafka = true\nsuperusers = [\"admin\"]\n",
        client_ca.pem
    );
    std::fs::write(&tuning, text).unwrap();
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    admin(&broker, &server_ca.pem, &["topic", "create", "certs", "--partitions", "1"]);
    for operation in ["read", "write"] {
        admin(
            &broker,
            &server_ca.pem,
            &["acl", "add", "--principal", "User:alice", "--topic", "certs", "--operation", operation],
        );
    }
    let bootstrap = broker.kafka_addr.unwrap().to_string();
    let with_certificate = |(cert, key): &(std::path::PathBuf, std::path::PathBuf)| -> Vec<String> {
        [
            "security.protocol=ssl".to_string(),
            format!("ssl.ca.location={}", server_ca.pem.display()),
            format!("ssl.certificate.location={}", cert.display()),
            format!("ssl.key.location={}", key.display()),
        ]
        .into_iter()
        .flat_map(|setting| ["-X".to_string(), setting])
        .collect()
    };
    let run = |base: &[&str], certificate: &(std::path::PathBuf, std::path::PathBuf), stdin: &str| {
        let args: Vec<String> = base.iter().map(|arg| arg.to_string()).chain(with_certificate(certificate)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client(&kcat, &args, stdin)
    };
    let alice = client_ca.issue(dir.path(), "alice", "alice", false);
    let produce = ["-b", &bootstrap, "-P", "-t", "certs", "-p", "0"];
    let sent = run(&produce, &alice, "by certificate\n");
    assert!(sent.status.success(), "alice is known by her certificate: {}", String::from_utf8_lossy(&sent.stderr));
    let consume = ["-b", &bootstrap, "-C", "-t", "certs", "-p", "0", "-o", "beginning", "-e"];
    let read = run(&consume, &alice, "");
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "by certificate");

    // bob's certificate is valid, but bob has no ACL.
    let bob = client_ca.issue(dir.path(), "bob", "bob", false);
    let refused = run(&produce, &bob, "not allowed\n");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.to_lowercase().contains("authorization failed"), "{said}");

    // An expired certificate, and one no CA signed, fail the handshake.
    let list = ["-b", &bootstrap, "-L", "-m", "5"];
    for (what, certificate) in [
        ("expired", client_ca.issue(dir.path(), "old-alice", "alice", true)),
        ("self-signed", self_signed(dir.path(), "fake-alice", "alice")),
    ] {
        let refused = run(&list, &certificate, "");
        assert!(!refused.status.success(), "an {what} client certificate must be refused");
    }
    let again = run(&list, &alice, "");
    assert!(again.status.success(), "the broker serves on: {}", String::from_utf8_lossy(&again.stderr));

    // The CLI (the native protocol) presents certificates too.
    let cli = |(cert, key): &(std::path::PathBuf, std::path::PathBuf), args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
            .args(["--broker", &broker.addr.to_string(), "--tls-ca", server_ca.pem.to_str().unwrap()])
            .args(["--tls-client-cert", cert.to_str().unwrap(), "--tls-client-key", key.to_str().unwrap()])
            .args(args)
            .env_remove("RINGBROKER_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"from the CLI\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let produced = cli(&alice, &["produce", "certs"]);
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    let read = cli(&alice, &["consume", "certs", "--from", "earliest", "--idle-exit-ms", "500"]);
    let read = String::from_utf8_lossy(&read.stdout);
    let values: Vec<&str> = read.lines().filter_map(|line| line.rsplit('\t').next()).collect();
    assert_eq!(values, ["by certificate", "from the CLI"], "{read}");
    let refused = cli(&bob, &["produce", "certs"]);
    assert!(!refused.status.success(), "bob may not see the topic");
    let expired = cli(&client_ca.issue(dir.path(), "old-alice-2", "alice", true), &["topic", "list"]);
    assert!(!expired.status.success(), "an expired certificate is refused");
    assert!(broker.terminate().success());
}
