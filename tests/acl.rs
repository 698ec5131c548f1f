//! ACLs against the real binary, deny by default once logins are on:
//! `ringbroker acl` grants alice a topic and a group; bob, with no
//! binding, gets TOPIC_AUTHORIZATION_FAILED from confluent-kafka and sees no
//! topic, and the CLI (the native protocol) refuses him too; alice produces
//! and consumes in her group; a removed binding stops working at once, and
//! bindings survive a restart.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::broker::BrokerProcess;
use support::clients::{python, python_report};
use support::temp_dir;

fn ringbroker(addr: &str, user: &str, password: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", addr, "--user", user])
        .args(args)
        .env("RINGBROKER_PASSWORD", password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ringbroker");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn refused(output: Output) -> String {
    assert!(!output.status.success(), "must be refused: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A broker requiring logins on both protocols, with users admin (a
/// superuser), alice and bob.
fn start(dir: &Path) -> (BrokerProcess, std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for user in ["admin", "alice", "bob"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
            .args(["user", "create", user, "--data-dir", data.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{user}-pw\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
    let tuning = dir.join("acl.toml");
    std::fs::write(&tuning, "[auth]\nnative = true\nkafka = true\nsuperusers = [\"admin\"]\nfailure_delay_ms = 100\n")
        .unwrap();
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    (broker, data, tuning)
}

#[test]
fn the_cli_grants_and_revokes_and_the_native_protocol_obeys() {
    let dir = temp_dir();
    let (broker, data, tuning) = start(dir.path());
    let addr = broker.addr.to_string();
    let admin = |args: &[&str]| ok(ringbroker(&addr, "admin", "admin-pw", args, ""));
    admin(&["topic", "create", "orders", "--partitions", "2"]);
    admin(&["topic", "create", "payroll", "--partitions", "1"]);

    // Deny by default: bob may do nothing, and sees no topic.
    let said = refused(ringbroker(&addr, "bob", "bob-pw", &["produce", "orders"], "x\n"));
    assert!(said.contains("topic orders does not exist"), "bob cannot even see it: {said}");
    let listed = ok(ringbroker(&addr, "bob", "bob-pw", &["topic", "list"], ""));
    assert!(!listed.contains("orders") && !listed.contains("payroll"), "bob sees no topic: {listed}");
    let said = refused(ringbroker(&addr, "bob", "bob-pw", &["acl", "list"], ""));
    assert!(said.contains("not authorized"), "{said}");

    // alice may read orders (so she sees it), but not write it yet.
    admin(&["acl", "add", "--principal", "User:alice", "--topic", "orders", "--operation", "read"]);
    let said = refused(ringbroker(&addr, "alice", "alice-pw", &["produce", "orders"], "x\n"));
    // (An idempotent producer first asks for a producer id, which takes Write
    // on some topic, or IdempotentWrite on the cluster.)
    assert!(said.contains("not authorized"), "{said}");
    let granted = admin(&[
        "acl",
        "add",
        "--principal",
        "User:alice",
        "--topic",
        "orders",
        "--operation",
        "write",
        "--operation",
        "read",
    ]);
    assert_eq!(granted.lines().count(), 2, "{granted}");
    ok(ringbroker(&addr, "alice", "alice-pw", &["produce", "orders"], "one\ntwo\n"));
    let read = ok(ringbroker(
        &addr,
        "alice",
        "alice-pw",
        &["consume", "orders", "--partition", "0", "--from", "earliest", "--idle-exit-ms", "500"],
        "",
    ));
    let read2 = ok(ringbroker(
        &addr,
        "alice",
        "alice-pw",
        &["consume", "orders", "--partition", "1", "--from", "earliest", "--idle-exit-ms", "500"],
        "",
    ));
    assert_eq!(read.lines().count() + read2.lines().count(), 2, "{read}{read2}");
    let listed = ok(ringbroker(&addr, "alice", "alice-pw", &["topic", "list"], ""));
    assert!(listed.contains("orders") && !listed.contains("payroll"), "{listed}");
    let said = refused(ringbroker(&addr, "alice", "alice-pw", &["produce", "payroll"], "x\n"));
    assert!(said.contains("does not exist"), "{said}");
    let said = refused(ringbroker(&addr, "alice", "alice-pw", &["topic", "delete", "orders"], ""));
    assert!(said.contains("not authorized"), "{said}");
    // A deny wins over an allow.
    admin(&["acl", "add", "--principal", "User:*", "--topic", "orders", "--operation", "write", "--deny"]);
    refused(ringbroker(&addr, "alice", "alice-pw", &["produce", "orders"], "three\n"));
    let removed = admin(&["acl", "remove", "--topic", "orders", "--deny"]);
    assert!(removed.contains("removed 1 binding"), "{removed}");
    ok(ringbroker(&addr, "alice", "alice-pw", &["produce", "orders"], "three\n"));
    assert!(broker.terminate().success());

    // The bindings survive a restart; removing one stops it at once.
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    let addr = broker.addr.to_string();
    let listed = ok(ringbroker(&addr, "admin", "admin-pw", &["acl", "list", "--principal", "User:alice"], ""));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    ok(ringbroker(
        &addr,
        "admin",
        "admin-pw",
        &["acl", "remove", "--principal", "User:alice", "--operation", "write"],
        "",
    ));
    refused(ringbroker(&addr, "alice", "alice-pw", &["produce", "orders"], "four\n"));
    assert!(broker.terminate().success());
}

#[test]
fn kafka_clients_without_an_acl_are_refused_and_see_nothing() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let (broker, _, _) = start(dir.path());
    let addr = broker.addr.to_string();
    let admin = |args: &[&str]| ok(ringbroker(&addr, "admin", "admin-pw", args, ""));
    admin(&["topic", "create", "ledger", "--partitions", "1"]);
    for operation in ["read", "write"] {
        admin(&["acl", "add", "--principal", "User:alice", "--topic", "ledger", "--operation", operation]);
    }
    admin(&["acl", "add", "--principal", "User:alice", "--group", "auditors", "--operation", "read"]);
    let bootstrap = broker.kafka_addr.unwrap().to_string();
    let client = |user: &str| {
        let password = format!("{user}-pw");
        python_report(&python, "confluent-acl", &[&bootstrap, "SCRAM-SHA-512", user, &password, "ledger", "auditors"])
    };
    let bob = client("bob");
    assert_eq!(bob["topics"], serde_json::json!([]), "bob sees no topic: {bob}");
    assert_eq!(bob["delivered"], 0, "{bob}");
    assert!(bob["produce_errors"].to_string().contains("TOPIC_AUTHORIZATION_FAILED"), "{bob}");
    assert_eq!(bob["consumed"], 0, "{bob}");
    let alice = client("alice");
    assert_eq!(alice["topics"], serde_json::json!(["ledger"]), "{alice}");
    assert_eq!(alice["delivered"], 10, "{alice}");
    assert_eq!(alice["consumed"], 10, "{alice}");
    assert!(broker.terminate().success());
}

/// A produce quota: a principal over it is told it was throttled
/// (throttle_time_ms, seen by librdkafka's throttle callback) and all its
/// events still arrive; a superuser is not throttled.
#[test]
fn a_principal_over_its_produce_quota_is_throttled() {
    let Some(python) = python() else { return };
    let dir = temp_dir();
    let (broker, data, tuning) = start(dir.path());
    assert!(broker.terminate().success());
    let text =
        std::fs::read_to_string(&tuning).unwrap().replace("[auth]\n", "[auth]\nproduce_bytes_per_second = 200000\n");
    std::fs::write(&tuning, text).unwrap();
    let broker = BrokerProcess::start(&data, &["--tuning", tuning.to_str().unwrap()]);
    let addr = broker.addr.to_string();
    ok(ringbroker(&addr, "admin", "admin-pw", &["topic", "create", "metered", "--partitions", "1"], ""));
    ok(ringbroker(
        &addr,
        "admin",
        "admin-pw",
        &["acl", "add", "--principal", "User:alice", "--topic", "metered", "--operation", "write"],
        "",
    ));
    let bootstrap = broker.kafka_addr.unwrap().to_string();
    let produce = |user: &str| {
        let password = format!("{user}-pw");
        python_report(&python, "confluent-quota", &[&bootstrap, "SCRAM-SHA-256", user, &password, "metered", "1024000"])
    };
    let alice = produce("alice");
    assert_eq!(alice["delivered"], 100, "{alice}");
    assert!(alice["throttled_ms"].as_u64().unwrap_or(0) > 0, "alice (1 MB at 200 KB/s) was throttled: {alice}");
    let admin = produce("admin");
    assert_eq!(admin["delivered"], 100, "{admin}");
    assert_eq!(admin["throttled_ms"], 0, "superusers have no quota: {admin}");
    assert!(broker.terminate().success());
}
