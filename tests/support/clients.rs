//! The real Kafka clients the tests drive: kcat on the PATH and a Python
//! with confluent-kafka and kafka-python (`RB_KAFKA_PYTHON`), both
//! installed by `.ci/run`. Missing ones skip their tests, unless
//! `RB_REQUIRE_KAFKA_CLIENTS` is set (as CI sets it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A client program, or `None` (with a message) where it is missing and
/// not required.
fn client(name: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            std::env::var_os("RB_REQUIRE_KAFKA_CLIENTS").is_none(),
            "{name} is required (RB_REQUIRE_KAFKA_CLIENTS)"
        );
        println!("skipped: {name} is not installed (see .ci/run)");
    }
    found
}

pub fn kcat() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("kcat")).find(|path| path.is_file()));
    client("kcat", found)
}

/// The Python interpreter that has confluent-kafka and kafka-python.
pub fn python() -> Option<PathBuf> {
    let found = std::env::var_os("RB_KAFKA_PYTHON").map(PathBuf::from).filter(|path| path.is_file());
    client("a Python with confluent-kafka and kafka-python (RB_KAFKA_PYTHON)", found)
}

/// The script that drives the Python clients (`tests/kafka_clients/clients.py`).
pub fn clients_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_clients/clients.py")
}

/// Runs a client with `stdin` and returns how it ended (success or not).
pub fn run_client(program: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("running {}: {error}", program.display()));
    child.stdin.take().expect("piped stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    child.wait_with_output().expect("waiting for the client")
}

/// Runs one mode of `clients.py` with `args`, asserts it succeeded, and
/// returns its report (the last line it printed, JSON).
pub fn python_report(python: &Path, mode: &str, args: &[&str]) -> serde_json::Value {
    let script = clients_script();
    let output = run_client(python, &[&[script.to_str().unwrap(), mode][..], args].concat(), "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{mode}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().expect("a report")).expect("a JSON report")
}
