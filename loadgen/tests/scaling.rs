//! `loadgen scaling` end to end: the binary runs its bursts as child
//! processes against embedded brokers (data in a temp dir, ports the OS
//! picks), and the table and its JSON say what each shard count did.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `loadgen scaling <args>` in `dir` (no target/ there: the brokers'
/// data goes to the temp dir); returns its output and both streams for
/// failure messages.
fn scaling<const N: usize>(dir: &Path, args: [&str; N]) -> (Output, String, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("scaling")
        .args(args)
        .arg("--no-progress")
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    (output, stdout, stderr, shown)
}

/// Runs `scaling --shards 1,2`: the 1-shard row needs two CPUs (one for
/// the shard, one for loadgen), the 2-shard row three. Rows the machine
/// cannot run must be skipped with the reason, not run on shared cores.
#[test]
fn scaling_runs_the_rows_the_cpus_allow_and_says_why_it_skips_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("scaling.json");
    // Enough events that the shard uses some 10 ms CPU ticks even in a
    // debug build, so its busy share (and efficiency) can be measured.
    let json_arg = json.to_str().unwrap();
    let (output, stdout, _, shown) = scaling(dir.path(), ["--shards", "1,2", "--events", "300000", "--json", json_arg]);
    let cpus = ringbroker::config::allowed_cpus().unwrap().len();
    if cpus < 2 {
        // Nothing can run: both rows say why, and the sweep fails.
        assert_eq!(output.status.code(), Some(1), "{shown}");
        assert!(stdout.contains("     1 skipped: 1 shard would leave no CPU for loadgen"), "{shown}");
        return;
    }
    assert!(output.status.success(), "{shown}");
    assert!(stdout.contains("efficiency"), "{shown}");
    let sweep: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = sweep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{sweep:#}");
    let one = &rows[0];
    assert_eq!((one["shards"].as_u64(), one["exit_code"].as_i64()), (Some(1), Some(0)), "{sweep:#}");
    assert!(one["events_per_s"].as_f64().unwrap() > 0.0, "{sweep:#}");
    assert_eq!(one["shard_busy_percent"].as_array().unwrap().len(), 1, "{sweep:#}");
    assert!(one["events_per_busy_core_s"].as_f64().unwrap() > 0.0, "{sweep:#}");
    assert_eq!(one["efficiency"].as_f64(), Some(1.0), "{sweep:#}");
    let two = &rows[1];
    if cpus == 2 {
        let reason = two["skipped"].as_str().unwrap();
        assert!(reason.contains("2 shards would leave no CPU for loadgen"), "{reason}");
        assert!(stdout.contains("     2 skipped: 2 shards would leave no CPU for loadgen"), "{shown}");
    } else {
        assert_eq!(two["exit_code"].as_i64(), Some(0), "{sweep:#}");
        assert!(two["events_per_s"].as_f64().unwrap() > 0.0, "{sweep:#}");
        assert_eq!(two["shard_busy_percent"].as_array().unwrap().len(), 2, "{sweep:#}");
        assert!(two["efficiency"].as_f64().unwrap() > 0.0, "{sweep:#}");
    }
}

/// `--broker-bin`: each row's broker is a `ringbroker serve` process of its
/// own; loadgen connects to it and reads the shard's CPU time from that
/// process's threads, so the row has a busy share and a per-core figure.
#[test]
fn scaling_can_run_each_rows_broker_as_its_own_process() {
    let cpus = ringbroker::config::allowed_cpus().unwrap().len();
    if cpus < 2 {
        return; // The 1-shard row needs a CPU for the shard and one for loadgen.
    }
    // `cargo test --workspace` builds the broker binary beside loadgen's.
    let ringbroker = Path::new(env!("CARGO_BIN_EXE_loadgen")).with_file_name("ringbroker");
    assert!(ringbroker.exists(), "{} is missing: build the workspace's binaries first", ringbroker.display());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("scaling.json");
    let (broker_arg, json_arg) = (ringbroker.to_str().unwrap(), json.to_str().unwrap());
    let args = ["--shards", "1", "--events", "300000", "--broker-bin", broker_arg, "--json", json_arg];
    let (output, stdout, stderr, shown) = scaling(dir.path(), args);
    assert!(output.status.success(), "{shown}");
    assert!(stderr.contains("--broker 127.0.0.1:"), "the burst ran against the process: {shown}");
    let sweep: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(sweep["broker"].as_str(), ringbroker.to_str(), "{sweep:#}");
    let row = &sweep["rows"][0];
    assert_eq!((row["shards"].as_u64(), row["exit_code"].as_i64()), (Some(1), Some(0)), "{sweep:#}");
    let busy = row["shard_busy_percent"].as_array().unwrap();
    assert_eq!(busy.len(), 1, "{sweep:#}");
    assert!(busy[0].as_f64().unwrap() > 0.0, "{sweep:#}");
    assert!(row["events_per_busy_core_s"].as_f64().unwrap() > 0.0, "{sweep:#}");
    // x86 and arm64 kernels count function-call interrupts per CPU.
    assert_eq!(row["shard_call_interrupts_per_s"].as_array().unwrap().len(), 1, "{sweep:#}");
    assert!(stdout.contains("shard IPIs/s"), "{shown}");
    // The broker stopped on SIGTERM, without being killed.
    assert!(!stderr.contains("did not stop on SIGTERM"), "{shown}");
}

/// A broker binary that never listens stops the sweep with the reason,
/// rather than hanging or running the burst against nothing.
#[test]
fn a_broker_process_that_never_listens_stops_the_sweep() {
    if ringbroker::config::allowed_cpus().unwrap().len() < 2 {
        return; // The row is skipped before any broker starts.
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, _, stderr, shown) =
        scaling(dir.path(), ["--shards", "1", "--events", "1000", "--broker-bin", "/bin/false"]);
    assert!(!output.status.success(), "{shown}");
    assert!(stderr.contains("/bin/false stopped before it listened"), "{shown}");
}
