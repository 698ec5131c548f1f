//! SASL logins against the real binary: users made with `ringbroker user`
//! (the first ones straight into the stopped broker's data directory), then
//! confluent-kafka over SASL_SSL with SCRAM-SHA-256, -512 and PLAIN, kcat
//! with SCRAM-SHA-256, -512 and PLAIN (Debian's kcat links librdkafka
//! 2.0.2, whose SCRAM final message repeats the client nonce; the broker
//! accepts that form as Kafka 3.8.1 to 3.9 do), a
//! wrong password refused while the broker serves others, PLAIN offered
//! only under TLS, a Kafka request before the login closed, the CLI (the
//! native client) logging in, and users managed online by superusers only,
//! surviving a restart.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, MetadataRequest};
use support::broker::BrokerProcess;
use support::certs::certificates;
use support::clients::{kcat, python, python_report, run_client};
use support::kafka::KafkaConnection;
use support::temp_dir;

/// Runs the CLI; returns its output whatever its exit status.
fn ringbroker(args: &[&str], env_password: Option<&str>, stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringbroker"));
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    match env_password {
        Some(password) => command.env("RINGBROKER_PASSWORD", password),
        None => command.env_remove("RINGBROKER_PASSWORD"),
    };
    let mut child = command.spawn().expect("running ringbroker");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn succeeded(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn failed(output: &Output) -> String {
    assert!(!output.status.success(), "must fail: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A data dir with users `admin` (a superuser) and `alice`, written
/// offline, and a tuning file requiring logins on both protocols (with TLS
/// when `tls`). Returns (data dir, tuning file, CA file if TLS).
fn setup(dir: &Path, tls: bool) -> (PathBuf, PathBuf, Option<PathBuf>) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (user, password) in [("admin", "admin-secret"), ("alice", "alice-secret")] {
        let args = ["user", "create", user, "--data-dir", data.to_str().unwrap()];
        succeeded(&ringbroker(&args, None, &format!("{password}\n")));
    }
    let listed = succeeded(&ringbroker(&["user", "list", "--data-dir", data.to_str().unwrap()], None, ""));
    assert!(listed.contains("alice\tSCRAM-SHA-256 (4096 iterations), SCRAM-SHA-512"), "{listed}");
    let mut text =
        "[auth]\nnative = true\nkafka = true\nsuperusers = [\"admin\"]\nfailure_delay_ms = 200\n".to_string();
    let ca = tls.then(|| {
        let (ca, cert, key) = certificates(dir);
        text += &format!("\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n", cert.to_str().unwrap(), key.to_str().unwrap());
        ca
    });
    let tuning = dir.join("auth.toml");
    std::fs::write(&tuning, text).unwrap();
    (data, tuning, ca)
}

/// Starts the broker and, the first time, lets every user use every topic
/// and group (ACLs are deny-by-default once logins are on; `tests/acl.rs`
/// covers them).
fn start(data: &Path, tuning: &Path, ca: Option<&Path>) -> BrokerProcess {
    let broker = BrokerProcess::start(data, &["--tuning", tuning.to_str().unwrap()]);
    let addr = broker.addr.to_string();
    let tls: Vec<&str> = ca.map(|ca| vec!["--tls-ca", ca.to_str().unwrap()]).unwrap_or_default();
    let grants: [&[&str]; 3] = [
        &["--topic", "*", "--operation", "all"],
        &["--group", "*", "--operation", "all"],
        &["--cluster", "--operation", "create", "--operation", "idempotent-write"],
    ];
    for grant in grants {
        let login = ["--broker", &addr, "--user", "admin"];
        let args = [&login[..], &tls, &["acl", "add", "--principal", "User:*"][..], grant].concat();
        succeeded(&ringbroker(&args, Some("admin-secret"), ""));
    }
    broker
}

fn sasl_ssl<'a>(ca: &'a str, mechanism: &'a str, user: &'a str, password: &'a str) -> Vec<String> {
    [
        "security.protocol=SASL_SSL".to_string(),
        format!("ssl.ca.location={ca}"),
        format!("sasl.mechanisms={mechanism}"),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
    ]
    .into_iter()
    .flat_map(|setting| ["-X".to_string(), setting])
    .collect()
}

fn with(base: &[&str], extra: &[String]) -> Vec<String> {
    base.iter().map(|arg| arg.to_string()).chain(extra.iter().cloned()).collect()
}

fn run_kcat(kcat: &Path, args: &[String], stdin: &str) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_client(kcat, &args, stdin)
}

/// The sum of a counter over every shard in one `/metrics` scrape.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn kcat_logs_in_over_tls_and_a_wrong_password_fails_cleanly() {
    let Some(kcat) = kcat() else { return };
    let dir = temp_dir();
    let (data, tuning, ca) = setup(dir.path(), true);
    let ca = ca.unwrap();
    let broker = start(&data, &tuning, Some(&ca));
    let ca = ca.to_str().unwrap();
    let bootstrap = broker.kafka_addr.unwrap().to_string();
    let lines: Vec<String> = (0..20).map(|i| format!("k{i}|signed {i}")).collect();
    let produce = ["-b", &bootstrap, "-P", "-t", "ledger", "-p", "0", "-K", "|"];
    let sent = run_kcat(
        &kcat,
        &with(&produce, &sasl_ssl(ca, "SCRAM-SHA-256", "alice", "alice-secret")),
        &(lines.join("\n") + "\n"),
    );
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let consume = ["-b", &bootstrap, "-C", "-t", "ledger", "-p", "0", "-o", "beginning", "-e", "-f", "%k|%s\n"];
    let read = run_kcat(&kcat, &with(&consume, &sasl_ssl(ca, "SCRAM-SHA-512", "alice", "alice-secret")), "");
    assert_eq!(String::from_utf8_lossy(&read.stdout).lines().collect::<Vec<_>>(), lines, "byte for byte");

    // A wrong password: kcat fails with an authentication error.
    let list = ["-b", &bootstrap, "-L", "-m", "5"];
    let refused = run_kcat(&kcat, &with(&list, &sasl_ssl(ca, "SCRAM-SHA-512", "alice", "wrong")), "");
    assert!(!refused.status.success(), "a wrong password must fail");
    let said = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(said.contains("authentication"), "refused for its login: {said}");
    // So does a user that does not exist.
    let unknown = run_kcat(&kcat, &with(&list, &sasl_ssl(ca, "SCRAM-SHA-256", "mallory", "x")), "");
    assert!(!unknown.status.success(), "an unknown user must fail");
    // The broker serves others meanwhile, and counted both.
    let again = run_kcat(&kcat, &with(&list, &sasl_ssl(ca, "PLAIN", "admin", "admin-secret")), "");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let metrics = broker.metrics_addr.unwrap();
    assert!(metric(metrics, "ringbroker_sasl_failures_total") >= 2);
    assert!(metric(metrics, "ringbroker_sasl_logins_total") >= 3);
    assert!(broker.terminate().success());
}

#[test]
fn confluent_kafka_logs_in_with_scram_over_tls() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let (data, tuning, ca) = setup(dir.path(), true);
    let ca = ca.unwrap();
    let broker = start(&data, &tuning, Some(&ca));
    let bootstrap = broker.kafka_addr.unwrap().to_string();
    let run = |mechanism: &str, password: &str| {
        python_report(
            &python,
            "confluent-sasl",
            &[&bootstrap, "vault", ca.to_str().unwrap(), mechanism, "alice", password],
        )
    };
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        let report = run(mechanism, "alice-secret");
        assert_eq!(report["delivered"], 50, "{mechanism}: {report}");
        assert!(report["values"].as_array().is_some_and(|values| values.len() >= 50), "{mechanism}: {report}");
    }
    let refused = run("SCRAM-SHA-512", "wrong");
    assert_eq!(refused["delivered"], 0, "{refused}");
    assert!(refused["errors"].to_string().to_lowercase().contains("authentication"), "{refused}");
    assert!(broker.terminate().success());
}

/// Without TLS, PLAIN is not offered (the password would cross in the
/// clear). A request before the login closes the connection.
#[test]
fn plain_needs_tls_and_requests_before_the_login_are_refused() {
    let dir = temp_dir();
    let (data, tuning, _) = setup(dir.path(), false);
    let broker = start(&data, &tuning, None);
    let kafka = broker.kafka_addr.unwrap();
    let mut early = KafkaConnection::open(kafka);
    early.send(ApiKey::Metadata, 12, &MetadataRequest::default());
    assert!(early.is_closed(), "a request before the SASL login closes the connection");
    if let Some(kcat) = kcat() {
        let bootstrap = kafka.to_string();
        let login = |mechanism: &str| {
            let settings = [
                "-X".to_string(),
                "security.protocol=SASL_PLAINTEXT".to_string(),
                "-X".to_string(),
                format!("sasl.mechanisms={mechanism}"),
                "-X".to_string(),
                "sasl.username=alice".to_string(),
                "-X".to_string(),
                "sasl.password=alice-secret".to_string(),
            ];
            run_kcat(&kcat, &with(&["-b", &bootstrap, "-L", "-m", "5"], &settings), "")
        };
        let plain = login("PLAIN");
        assert!(!plain.status.success(), "PLAIN without TLS must be refused");
    }
    // The native protocol: the CLI without a login is told to log in.
    let addr = broker.addr.to_string();
    let anonymous = failed(&ringbroker(&["--broker", &addr, "topic", "list"], None, ""));
    assert!(anonymous.contains("authentication required"), "{anonymous}");
    let plain = failed(&ringbroker(
        &["--broker", &addr, "--user", "alice", "--sasl-mechanism", "PLAIN", "topic", "list"],
        Some("alice-secret"),
        "",
    ));
    assert!(plain.contains("not offered"), "{plain}");
    assert!(broker.terminate().success());
}

/// The CLI logs in; a wrong password fails cleanly; only a superuser
/// manages users, online, and what it sets survives a restart and works at
/// once for new logins.
#[test]
fn the_cli_logs_in_and_superusers_manage_users() {
    let dir = temp_dir();
    let (data, tuning, _) = setup(dir.path(), false);
    let broker = start(&data, &tuning, None);
    let addr = broker.addr.to_string();
    let as_user = |user: &str, password: &str, args: &[&str], stdin: &str| {
        let login = ["--broker", &addr, "--user", user];
        ringbroker(&[&login[..], args].concat(), Some(password), stdin)
    };
    succeeded(&as_user("alice", "alice-secret", &["topic", "create", "orders", "--partitions", "2"], ""));
    succeeded(&as_user("alice", "alice-secret", &["produce", "orders"], "one\ntwo\n"));
    let wrong = failed(&as_user("alice", "nope", &["topic", "list"], ""));
    assert!(wrong.contains("authentication failed"), "{wrong}");
    let listed = succeeded(&as_user("alice", "alice-secret", &["topic", "list"], ""));
    assert!(listed.contains("orders"), "the broker serves on: {listed}");

    // alice is no superuser: she may not manage users.
    let refused = failed(&as_user("alice", "alice-secret", &["user", "create", "carol"], "carol-secret\n"));
    assert!(refused.contains("not authorized"), "{refused}");
    let refused = failed(&as_user("alice", "alice-secret", &["user", "list"], ""));
    assert!(refused.contains("not authorized"), "{refused}");
    // admin is.
    succeeded(&as_user(
        "admin",
        "admin-secret",
        &["user", "create", "bob", "--mechanism", "scram-sha-256"],
        "bob-pw\n",
    ));
    let bad_iterations =
        failed(&as_user("admin", "admin-secret", &["user", "create", "eve", "--iterations", "10"], "x\n"));
    assert!(bad_iterations.contains("iterations"), "{bad_iterations}");
    // bob logs in at once, with the mechanism he has a credential for only.
    succeeded(&ringbroker(
        &["--broker", &addr, "--user", "bob", "--sasl-mechanism", "SCRAM-SHA-256", "topic", "list"],
        Some("bob-pw"),
        "",
    ));
    failed(&as_user("bob", "bob-pw", &["topic", "list"], ""));
    succeeded(&as_user("admin", "admin-secret", &["user", "delete", "alice"], ""));
    failed(&as_user("alice", "alice-secret", &["topic", "list"], ""));
    assert!(broker.terminate().success());

    // After a restart the users are as they were left.
    let broker = start(&data, &tuning, None);
    let addr = broker.addr.to_string();
    let users =
        succeeded(&ringbroker(&["--broker", &addr, "--user", "admin", "user", "list"], Some("admin-secret"), ""));
    let names: Vec<&str> = users.lines().filter_map(|line| line.split('\t').next()).collect();
    assert_eq!(names, ["admin", "bob"], "{users}");
    assert!(users.contains("bob\tSCRAM-SHA-256 (4096 iterations)"), "{users}");
    assert!(broker.terminate().success());
}

/// One principal cannot hold more than its connections on a shard; others
/// still get in, and a closed connection frees its place.
#[test]
fn a_principal_holds_at_most_its_connections() {
    use ringbroker::client::{Connection, ConnectionOptions, SaslCredentials};
    let dir = temp_dir();
    let (data, tuning, _) = setup(dir.path(), false);
    let mut text = std::fs::read_to_string(&tuning).unwrap();
    text = text.replace("[auth]\n", "[auth]\nmax_connections_per_principal = 2\n");
    std::fs::write(&tuning, text).unwrap();
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    // Shard 0's own port, so every connection lands on the same shard.
    let addr = std::net::SocketAddr::new(broker.addr.ip(), broker.shard_ports[0]);
    let outcome = support::run(move || async move {
        let options = |user: &str, password: &str| ConnectionOptions {
            sasl: Some(SaslCredentials {
                mechanism: "SCRAM-SHA-256".into(),
                user: user.into(),
                password: password.into(),
            }),
            ..ConnectionOptions::default()
        };
        let first = Connection::connect_with(addr, options("alice", "alice-secret")).await.unwrap();
        let second = Connection::connect_with(addr, options("alice", "alice-secret")).await.unwrap();
        let third =
            Connection::connect_with(addr, options("alice", "alice-secret")).await.map(drop).map_err(|e| e.to_string());
        let other =
            Connection::connect_with(addr, options("admin", "admin-secret")).await.map(drop).map_err(|e| e.to_string());
        first.close();
        drop(first);
        // The broker frees the place once it sees the close: try until it
        // has (a refusal meanwhile is the limit still counting it).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let again = loop {
            let attempt = Connection::connect_with(addr, options("alice", "alice-secret")).await;
            match attempt {
                Ok(_) => break Ok(()),
                Err(error) if std::time::Instant::now() > deadline => break Err(error.to_string()),
                Err(_) => glommio::timer::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        drop(second);
        (third, other, again)
    });
    let (third, other, again) = outcome;
    let refused = third.expect_err("a third connection is over alice's limit");
    assert!(refused.contains("max_connections_per_principal"), "{refused}");
    assert_eq!(other, Ok(()), "other principals get in");
    assert_eq!(again, Ok(()), "a closed connection frees its place");
    assert!(broker.terminate().success());
}
