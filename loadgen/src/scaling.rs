//! `loadgen scaling`: the same burst against an embedded broker with 1, 2,
//! 4, ... shards, and one table to choose a shard count by.
//!
//! Each row is a fresh loadgen process (this binary running `burst`), so
//! rows cannot disturb one another (leftover threads, memory, a crash) and
//! each can be rerun alone with the command line printed for it. Shards
//! take the first n CPUs of the sweep, loadgen's executors the rest. A
//! shard count that would leave loadgen no CPU is skipped rather than run
//! on shared cores, where it would measure the fight for the CPU.
//!
//! The load grows with the shards so that every shard sees the same load:
//! a row with n shards has n x --partitions partitions, n x --producers
//! producers and (if given) n x --consumers consumers. --events is the
//! total of each row.
//!
//! Shards that wait for loadgen are not saturated, so throughput alone does
//! not show what a shard can do. The table therefore also divides the
//! events by the CPU time the shard threads used (events per busy shard
//! core). Efficiency compares that figure with the 1-shard row: 1.00 means
//! each added shard does as much per core as one shard alone.
//!
//! With `--broker-bin`, each row's broker is a `ringbroker serve` process
//! of its own (fresh data dir, ports the OS picks) and loadgen connects to
//! it, as clients in production do. The shards' CPU time is then read from
//! that process's threads. This keeps loadgen's executors out of the
//! broker's process: glommio issues `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
//! each time an executor goes to sleep, which interrupts every CPU running
//! a thread of the same process, so embedded, every loadgen executor's sleep
//! interrupts every shard.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use ringbroker::config::format_cpu_list;
use serde::{Deserialize, Serialize};

use crate::cpustat::{function_call_interrupts, Snapshot};
use crate::report::{is_shard_thread, Percentiles, Throughput};
use crate::scenario::Scenario;
use crate::{Cli, Options, Protocol};

/// `scaling`'s own options; the rest are the global ones.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingArgs {
    /// Shard counts to run, e.g. 1,2,4,8 [default: 1, 2, 4, ... while a CPU
    /// is left for loadgen].
    #[arg(long, value_delimiter = ',')]
    shards: Option<Vec<usize>>,
    /// Run each row's broker as a process of its own, this `ringbroker`
    /// binary (`ringbroker serve`, e.g. target/release/ringbroker), instead
    /// of inside loadgen.
    #[arg(long, value_name = "RINGBROKER")]
    broker_bin: Option<PathBuf>,
}

/// The whole sweep, as `--json` writes it.
#[derive(Debug, Serialize)]
struct Sweep {
    /// The CPUs the sweep used: shards first, loadgen the rest.
    cpus: Vec<usize>,
    /// The base tuning file (its shards.cpus replaced in every row).
    tuning: String,
    /// "embedded" (inside loadgen) or the `ringbroker` binary each row ran.
    broker: String,
    events: u64,
    event_bytes: usize,
    partitions_per_shard: u32,
    producers_per_shard: u32,
    rows: Vec<Row>,
}

/// One shard count's results.
#[derive(Debug, Default, Serialize)]
struct Row {
    shards: usize,
    shard_cpus: Vec<usize>,
    loadgen_cpus: Vec<usize>,
    /// Why the row did not run.
    skipped: Option<String>,
    /// The burst's exit status (0: every event accounted for); `None`: not
    /// run, or killed by a signal.
    exit_code: Option<i32>,
    events_per_s: Option<f64>,
    mb_per_s: Option<f64>,
    /// Each shard's busy share of its core (100 = fully busy).
    shard_busy_percent: Vec<f64>,
    /// Events acknowledged per CPU second of the shard threads.
    events_per_busy_core_s: Option<f64>,
    ack_p99_us: Option<u64>,
    ack_p99_9_us: Option<u64>,
    /// `events_per_busy_core_s` relative to the base row (1 shard).
    efficiency: Option<f64>,
    /// Function-call interrupts per second taken by each shard's CPU over
    /// the row (glommio's membarrier on every executor's sleep lands here).
    shard_call_interrupts_per_s: Vec<f64>,
}

/// What a row reads back from its burst's JSON report.
#[derive(Debug, Deserialize)]
struct BurstReport {
    throughput: Throughput,
    latency: BTreeMap<String, Percentiles>,
    shard_busy_percent: Option<Vec<f64>>,
    wall_s: f64,
}

/// Runs the sweep, prints the table; returns the exit status: the first
/// failed burst's, 1 if no row could run, else 0.
pub fn run(args: &ScalingArgs, options: &Options) -> anyhow::Result<i32> {
    refuse_options(options)?;
    let cpus = sweep_cpus(options)?;
    // Loaded here only to name it and to stop at a bad file before any row.
    let (_, tuning) = crate::scenario::load_tuning(options.tuning.as_deref())?;
    let counts = args.shards.clone().unwrap_or_else(|| default_shard_counts(cpus.len()));
    if counts.contains(&0) {
        bail!("--shards: a shard count must be at least 1");
    }
    // Every row's burst is checked before the first one runs, so a bad
    // option stops the sweep before it has spent anything.
    for &shards in counts.iter().filter(|&&shards| shards < cpus.len()) {
        let row = Row {
            shards,
            shard_cpus: cpus[..shards].to_vec(),
            loadgen_cpus: cpus[shards..].to_vec(),
            ..Row::default()
        };
        let target = args.broker_bin.as_ref().map(|_| Endpoint::placeholder(options.protocol));
        check_burst(&burst_args(options, &row, target.as_ref()))?;
    }
    let exe = std::env::current_exe().context("finding the loadgen binary")?;
    let reports = tempfile::tempdir().context("creating a temp dir for the bursts' reports")?;
    let mut rows = Vec::new();
    let mut exit_code = 0;
    for shards in counts {
        let mut row = Row { shards, ..Row::default() };
        let plural = if shards == 1 { "" } else { "s" };
        if shards >= cpus.len() {
            let reason = format!(
                "{shards} shard{plural} would leave no CPU for loadgen (the sweep's CPUs: {})",
                format_cpu_list(&cpus)
            );
            eprintln!("scaling: {shards} shard{plural}: skipped: {reason}");
            row.skipped = Some(reason);
            rows.push(row);
            continue;
        }
        row.shard_cpus = cpus[..shards].to_vec();
        row.loadgen_cpus = cpus[shards..].to_vec();
        let json = reports.path().join(format!("shards-{shards}.json"));
        let data = reports.path().join(format!("data-{shards}"));
        let broker = args.broker_bin.as_ref().map(|bin| BrokerProcess::start(bin, options, &row, &data)).transpose()?;
        let mut burst = burst_args(options, &row, broker.as_ref().map(|broker| &broker.endpoint));
        eprintln!("scaling: {shards} shard{plural}: loadgen {}", shown(&burst));
        burst.extend(["--json".into(), json.clone().into()]);
        let (threads_before, interrupts_before) =
            (broker.as_ref().map(BrokerProcess::threads), function_call_interrupts());
        let started = Instant::now();
        let output = run_burst(&exe, &burst);
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        if let (Some(before), Some(after)) = (interrupts_before, function_call_interrupts()) {
            let per_s =
                |cpu: &usize| after.get(cpu).zip(before.get(cpu)).map(|(a, b)| a.saturating_sub(*b) as f64 / seconds);
            row.shard_call_interrupts_per_s = row.shard_cpus.iter().filter_map(per_s).collect();
        }
        // A broker process's shard CPU is read from its threads; embedded,
        // the burst's report has it.
        let shard_cpu = broker.zip(threads_before).map(|(broker, before)| {
            let threads = broker.threads().seconds_since(&before);
            broker.stop();
            ShardCpu::over(&per_shard(&threads, shards), seconds)
        });
        let output = output?;
        // Its warnings, but not where it wrote the report (a temp file).
        let wrote = format!("loadgen: wrote {}", json.display());
        for line in String::from_utf8_lossy(&output.stderr).lines().filter(|line| *line != wrote) {
            eprintln!("{line}");
        }
        row.exit_code = output.status.code();
        if !output.status.success() {
            eprintln!("scaling: the {shards}-shard burst failed ({}); its report:", output.status);
            eprintln!("{}", String::from_utf8_lossy(&output.stdout));
            if exit_code == 0 {
                exit_code = output.status.code().unwrap_or(1);
            }
        }
        // A failed burst may still have written its report: show what it
        // measured, flagged by its exit code.
        if let Ok(text) = std::fs::read_to_string(&json) {
            let report: BurstReport =
                serde_json::from_str(&text).with_context(|| format!("reading {}", json.display()))?;
            measure(&mut row, &report, shard_cpu);
        }
        rows.push(row);
    }
    set_efficiency(&mut rows);
    let broker = args.broker_bin.as_ref().map_or_else(|| "embedded".to_string(), |bin| bin.display().to_string());
    let sweep = Sweep {
        cpus,
        tuning,
        broker,
        events: options.events.unwrap_or(crate::BURST_EVENTS),
        event_bytes: options.size,
        partitions_per_shard: options.partitions,
        producers_per_shard: options.producers.unwrap_or(crate::PRODUCERS),
        rows,
    };
    print!("{}", table(&sweep));
    if let Some(path) = &options.json {
        let file = std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &sweep)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    if sweep.rows.iter().all(|row| row.skipped.is_some()) {
        eprintln!("loadgen: no row ran: every shard count would leave loadgen without a CPU");
        return Ok(1);
    }
    Ok(exit_code)
}

/// Runs one row's burst, its output captured.
fn run_burst(exe: &Path, burst: &[OsString]) -> anyhow::Result<Output> {
    Command::new(exe).args(burst).stdin(Stdio::null()).output().with_context(|| format!("running {}", exe.display()))
}

/// Where loadgen finds a broker that runs as its own process.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Native(String),
    Kafka(String),
}

impl Endpoint {
    /// An address for checking a row's command line before any broker runs.
    fn placeholder(protocol: Protocol) -> Endpoint {
        let addr = "127.0.0.1:9".to_string();
        match protocol {
            Protocol::Native => Endpoint::Native(addr),
            Protocol::Kafka => Endpoint::Kafka(addr),
        }
    }

    /// Reads the endpoint off `ringbroker serve`'s startup line, e.g.
    /// `ringbroker listening on 127.0.0.1:40001 shards=1 ... kafka=off ...`.
    fn from_startup_line(line: &str, protocol: Protocol) -> Option<Endpoint> {
        let native = line.strip_prefix("ringbroker listening on ")?.split_whitespace().next()?;
        match protocol {
            Protocol::Native => Some(Endpoint::Native(native.to_string())),
            Protocol::Kafka => {
                let kafka = line.split_whitespace().find_map(|word| word.strip_prefix("kafka="))?;
                (kafka != "off").then(|| Endpoint::Kafka(kafka.to_string()))
            }
        }
    }
}

/// A row's broker, `ringbroker serve` as a child process.
struct BrokerProcess {
    child: Child,
    endpoint: Endpoint,
}

/// How long a broker may take to stop on SIGTERM before it is killed.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a broker may take to start listening (recovering a data dir is
/// not part of it: each row's is new).
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);

impl BrokerProcess {
    /// Starts the broker on the row's shard CPUs with its data in `data`,
    /// on ports the OS picks, and waits for its startup line.
    fn start(bin: &Path, options: &Options, row: &Row, data: &Path) -> anyhow::Result<BrokerProcess> {
        let mut command = Command::new(bin);
        command.args(["--log", "warn", "serve", "--data"]).arg(data);
        command.args(["--listen", "127.0.0.1:0", "--shard-ports", "auto", "--no-metrics"]);
        command.args(["--cpus", &format_cpu_list(&row.shard_cpus)]);
        if let Some(tuning) = &options.tuning {
            command.arg("--tuning").arg(tuning);
        }
        match options.protocol {
            Protocol::Native => command.arg("--no-kafka"),
            Protocol::Kafka => command.args(["--kafka-listen", "127.0.0.1:0", "--kafka-shard-ports", "auto"]),
        };
        // Its log (stderr) shows with ours; stdout carries the startup line.
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("the broker's stdout")?;
        // A thread reads its stdout: it hands over the endpoint once the
        // startup line comes, then keeps reading, so that nothing the broker
        // prints later meets a closed pipe.
        let (found, endpoint) = std::sync::mpsc::sync_channel(1);
        let protocol = options.protocol;
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match (Endpoint::from_startup_line(&line, protocol), found.take()) {
                    (Some(endpoint), Some(sender)) => {
                        let _ = sender.send(endpoint);
                    }
                    (_, sender) => {
                        found = sender;
                        eprintln!("broker: {line}");
                    }
                }
            }
        });
        let endpoint = match endpoint.recv_timeout(BROKER_START_TIMEOUT) {
            Ok(endpoint) => endpoint,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not listen within {BROKER_START_TIMEOUT:?}; killed it", bin.display());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().context("waiting for the broker")?;
                bail!("{} stopped before it listened ({status}); its log is above", bin.display());
            }
        };
        Ok(BrokerProcess { child, endpoint })
    }

    /// Its threads' CPU time so far.
    fn threads(&self) -> Snapshot {
        Snapshot::of_process(self.child.id())
    }

    /// SIGTERM, then SIGKILL if it has not stopped in time; its exit status
    /// is not the row's result, so failures here are only reported.
    fn stop(mut self) {
        let pid = self.child.id();
        if let Err(error) =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
        {
            eprintln!("scaling: stopping the broker (pid {pid}): {error}");
        }
        let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        eprintln!("scaling: the broker (pid {pid}) did not stop on SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each shard's CPU seconds, from its threads' (named as glommio names
/// them, see [`is_shard_thread`]).
fn per_shard(threads: &[(String, f64)], shards: usize) -> Vec<f64> {
    (0..shards)
        .map(|shard| threads.iter().filter(|(name, _)| is_shard_thread(name, shard)).map(|(_, seconds)| seconds).sum())
        .collect()
}

/// The shards' CPU over a row, measured outside the burst's report.
#[derive(Debug, Clone, PartialEq)]
struct ShardCpu {
    busy_percent: Vec<f64>,
    seconds: f64,
}

impl ShardCpu {
    /// From each shard thread's CPU seconds over `wall_s`.
    fn over(shard_seconds: &[f64], wall_s: f64) -> ShardCpu {
        let busy_percent = shard_seconds.iter().map(|seconds| seconds / wall_s.max(1e-9) * 100.0).collect();
        ShardCpu { busy_percent, seconds: shard_seconds.iter().sum() }
    }
}

/// Options that have no meaning for a sweep are refused, not ignored.
fn refuse_options(options: &Options) -> anyhow::Result<()> {
    let refused = [
        (options.broker.is_some(), "--broker (a sweep starts its own brokers)"),
        (options.kafka_broker.is_some(), "--kafka-broker (a sweep starts its own brokers)"),
        (options.shard_cpus.is_some(), "--shard-cpus (a sweep sets them per row; --cpus chooses the CPUs)"),
        (options.hgrm_dir.is_some(), "--hgrm-dir (rerun a row's burst for its files)"),
        (options.svg.is_some(), "--svg (rerun a row's burst for its picture)"),
        (options.html.is_some(), "--html (rerun a row's burst for its picture)"),
    ];
    match refused.iter().find(|(given, _)| *given) {
        Some((_, flag)) => bail!("scaling does not take {flag}"),
        None => Ok(()),
    }
}

/// The sweep's CPUs: --cpus, else every CPU this process may use.
fn sweep_cpus(options: &Options) -> anyhow::Result<Vec<usize>> {
    let allowed = ringbroker::config::allowed_cpus()?;
    let Some(list) = &options.cpus else { return Ok(allowed) };
    let cpus = ringbroker::config::parse_cpu_list(list).context("--cpus")?;
    if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
        bail!("--cpus: CPU {cpu} is not available to this process (allowed: {})", format_cpu_list(&allowed));
    }
    Ok(cpus)
}

/// 1, 2, 4, ... below the number of CPUs (at least 1, which on a single
/// CPU is then skipped with its reason).
fn default_shard_counts(cpus: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |n| n.checked_mul(2)).take_while(|&n| n == 1 || n < cpus).collect()
}

/// The row's `burst` command line (without `--json`): the sweep's options,
/// the per-shard counts multiplied by the shards, the row's CPUs; with a
/// `target`, against that broker rather than an embedded one.
fn burst_args(options: &Options, row: &Row, target: Option<&Endpoint>) -> Vec<OsString> {
    let per_shard = |count: u32| count.saturating_mul(row.shards as u32).to_string();
    let mut args: Vec<OsString> = vec!["burst".into()];
    let mut set = |flag: &str, value: String| args.extend([OsString::from(flag), value.into()]);
    set("--events", options.events.unwrap_or(crate::BURST_EVENTS).to_string());
    set("--size", options.size.to_string());
    set("--partitions", per_shard(options.partitions));
    set("--producers", per_shard(options.producers.unwrap_or(crate::PRODUCERS)));
    if let Some(consumers) = options.consumers {
        set("--consumers", per_shard(consumers));
    }
    set("--acks", value_name(options.acks));
    if let Some(bytes) = options.batch_bytes {
        set("--batch-bytes", bytes.to_string());
    }
    set("--linger-ms", options.linger_ms.to_string());
    set("--max-in-flight", options.max_in_flight.to_string());
    set("--compression", options.compression.name().to_string());
    set("--idempotent", options.idempotent.to_string());
    for (key, value) in &options.topic_configs {
        set("--topic-config", format!("{key}={value}"));
    }
    if let Some(ca) = &options.tls_ca {
        set("--tls-ca", ca.display().to_string());
    }
    if let Some(rate) = options.consumer_rate {
        set("--consumer-rate", rate.to_string());
    }
    set("--topic-prefix", options.topic_prefix.clone());
    set("--protocol", value_name(options.protocol));
    if let Some(mode) = options.kafka_mode {
        set("--kafka-mode", value_name(mode));
    }
    match target {
        None => {
            if let Some(tuning) = &options.tuning {
                set("--tuning", tuning.display().to_string());
            }
            set("--shard-cpus", format_cpu_list(&row.shard_cpus));
        }
        Some(Endpoint::Native(addr)) => set("--broker", addr.clone()),
        Some(Endpoint::Kafka(addr)) => set("--kafka-broker", addr.clone()),
    }
    set("--cpus", format_cpu_list(&row.loadgen_cpus));
    set("--drain-timeout-s", options.drain_timeout_s.to_string());
    set("--io-memory-bytes", options.io_memory_bytes.to_string());
    set("--spin-us", options.spin_us.to_string());
    // Its stderr is not a terminal: the rows are shown one line each.
    args.push("--no-progress".into());
    args
}

/// A value as clap spells it on the command line.
fn value_name(value: impl ValueEnum) -> String {
    value.to_possible_value().map_or_else(String::new, |value| value.get_name().to_string())
}

/// Parses and validates a row's command line here, so a bad option stops
/// the sweep before its first burst rather than failing every row.
fn check_burst(args: &[OsString]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once(OsString::from("loadgen")).chain(args.iter().cloned()))?;
    crate::scenario::validate(&crate::settings(Scenario::Burst, &cli.options)?)
}

/// A command line as it would be typed (arguments with odd characters
/// quoted).
fn shown(args: &[OsString]) -> String {
    let word = |arg: &OsString| {
        let arg = arg.to_string_lossy();
        let plain = arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_.,/=:".contains(c));
        if plain && !arg.is_empty() {
            arg.into_owned()
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    args.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// Fills in what the row's burst measured; `shard_cpu`: the shards' CPU
/// when the broker ran as its own process (embedded, the report has it).
fn measure(row: &mut Row, report: &BurstReport, shard_cpu: Option<ShardCpu>) {
    let throughput = &report.throughput;
    row.events_per_s = throughput.produce_events_per_s;
    row.mb_per_s = throughput.produce_mb_per_s;
    if let Some(ack) = report.latency.get("ack") {
        row.ack_p99_us = Some(ack.p99_us);
        row.ack_p99_9_us = Some(ack.p99_9_us);
    }
    let shard_cpu_s = match shard_cpu {
        Some(ShardCpu { busy_percent, seconds }) => {
            row.shard_busy_percent = busy_percent;
            seconds
        }
        None => {
            row.shard_busy_percent = report.shard_busy_percent.clone().unwrap_or_default();
            // Busy shares are over the whole run (to the consumers' catching
            // up), so the CPU seconds are too.
            row.shard_busy_percent.iter().sum::<f64>() / 100.0 * report.wall_s
        }
    };
    let events = throughput.produce_events_per_s.zip(throughput.produce_s).map(|(rate, s)| rate * s);
    row.events_per_busy_core_s = events.filter(|_| shard_cpu_s > 0.0).map(|events| events / shard_cpu_s);
}

/// Efficiency of every measured row against the row with the fewest shards
/// (1 unless --shards left it out).
fn set_efficiency(rows: &mut [Row]) {
    let base = rows
        .iter()
        .filter(|row| row.events_per_busy_core_s.is_some())
        .min_by_key(|row| row.shards)
        .and_then(|row| row.events_per_busy_core_s);
    for row in rows {
        row.efficiency = row.events_per_busy_core_s.zip(base).map(|(per_core, base)| per_core / base);
    }
}

/// The table, with a header saying what ran and a legend.
fn table(sweep: &Sweep) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nringbroker loadgen: scaling on CPUs {} (shards first, loadgen on the rest)\n\
         tuning    {}\n\
         broker    {}\n\
         each row  {} events of {} B, {} partitions and {} producers per shard\n",
        format_cpu_list(&sweep.cpus),
        sweep.tuning,
        sweep.broker,
        sweep.events,
        sweep.event_bytes,
        sweep.partitions_per_shard,
        sweep.producers_per_shard,
    );
    let _ = writeln!(
        text,
        "{:>6} {:>12} {:>11} {:>8} {:>16} {:>14} {:>11} {:>12} {:>10} {:>16}",
        "shards",
        "loadgen CPUs",
        "events/s",
        "MB/s",
        "shard busy %",
        "per busy core",
        "ack p99 ms",
        "ack p99.9 ms",
        "efficiency",
        "shard IPIs/s"
    );
    let number = |value: Option<f64>, decimals: usize| value.map_or("-".into(), |value| format!("{value:.decimals$}"));
    let ms = |us: Option<u64>| number(us.map(|us| us as f64 / 1e3), 3);
    for row in &sweep.rows {
        if let Some(reason) = &row.skipped {
            let _ = writeln!(text, "{:>6} skipped: {reason}", row.shards);
            continue;
        }
        let line = format!(
            "{:>6} {:>12} {:>11} {:>8} {:>16} {:>14} {:>11} {:>12} {:>10} {:>16}",
            row.shards,
            format_cpu_list(&row.loadgen_cpus),
            number(row.events_per_s, 0),
            number(row.mb_per_s, 1),
            mean_and_range(&row.shard_busy_percent),
            number(row.events_per_busy_core_s, 0),
            ms(row.ack_p99_us),
            ms(row.ack_p99_9_us),
            number(row.efficiency, 2),
            mean_and_range(&row.shard_call_interrupts_per_s),
        );
        let failed = match row.exit_code {
            Some(0) => String::new(),
            Some(code) => format!("  FAILED (exit {code}, its report is above)"),
            None => "  FAILED (killed, its report is above)".into(),
        };
        let _ = writeln!(text, "{line}{failed}");
    }
    text.push_str(
        "\nshard busy %: mean (min-max) over the shards, 100 = a core fully busy; well below 100, loadgen or\n\
         latency (acks wait for fdatasync) set the pace. per busy core: events acknowledged per CPU second\n\
         of the shard threads. efficiency: per busy core relative to the row with the fewest shards\n\
         (1.00 = linear). shard IPIs/s: function-call interrupts a second on the shards' CPUs, mean\n\
         (min-max); glommio sends one to every CPU running its process each time an executor sleeps.\n",
    );
    text
}

/// The mean over the shards, with the range when there are several.
fn mean_and_range(shards: &[f64]) -> String {
    let Some(mean) = (!shards.is_empty()).then(|| shards.iter().sum::<f64>() / shards.len() as f64) else {
        return "-".into();
    };
    if shards.len() == 1 {
        return format!("{mean:.0}");
    }
    let min = shards.iter().copied().fold(f64::INFINITY, f64::min);
    let max = shards.iter().copied().fold(0.0, f64::max);
    format!("{mean:.0} ({min:.0}-{max:.0})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied())).unwrap().options
    }

    #[test]
    fn default_counts_leave_loadgen_a_cpu() {
        assert_eq!(default_shard_counts(1), [1]);
        assert_eq!(default_shard_counts(2), [1]);
        assert_eq!(default_shard_counts(8), [1, 2, 4]);
        assert_eq!(default_shard_counts(9), [1, 2, 4, 8]);
    }

    #[test]
    fn a_row_runs_a_burst_scaled_to_its_shards() {
        let options = options(&["scaling", "--shards", "1,2", "--size", "1024", "--compression", "zstd"]);
        let row = Row { shards: 2, shard_cpus: vec![0, 1], loadgen_cpus: vec![2, 3], ..Row::default() };
        let args = burst_args(&options, &row, None);
        let cli = Cli::try_parse_from(std::iter::once(OsString::from("loadgen")).chain(args)).unwrap();
        assert!(matches!(cli.scenario, Some(crate::Command::Burst)));
        let burst = &cli.options;
        assert_eq!((burst.partitions, burst.producers, burst.consumers), (8, Some(4), None));
        assert_eq!((burst.events, burst.size), (Some(crate::BURST_EVENTS), 1024));
        assert_eq!((burst.shard_cpus.as_deref(), burst.cpus.as_deref()), (Some("0-1"), Some("2-3")));
        assert_eq!(
            (burst.compression, burst.acks, burst.idempotent),
            (options.compression, crate::Acks::Durable, true)
        );
        assert!(burst.broker.is_none() && burst.tuning.is_none());
    }

    #[test]
    fn a_row_against_a_broker_process_names_its_address_and_no_shards() {
        let options = options(&["--tuning", "t.toml", "scaling", "--broker-bin", "/x/ringbroker"]);
        let row = Row { shards: 1, shard_cpus: vec![0], loadgen_cpus: vec![1], ..Row::default() };
        let target = Endpoint::Native("127.0.0.1:4000".into());
        let args = burst_args(&options, &row, Some(&target));
        let burst = Cli::try_parse_from(std::iter::once(OsString::from("loadgen")).chain(args)).unwrap().options;
        assert_eq!(burst.broker.as_deref(), Some("127.0.0.1:4000"));
        assert_eq!((burst.tuning, burst.shard_cpus, burst.cpus.as_deref()), (None, None, Some("1")));
        let kafka = Endpoint::Kafka("127.0.0.1:4001".into());
        let args = burst_args(&options, &row, Some(&kafka));
        let burst = Cli::try_parse_from(std::iter::once(OsString::from("loadgen")).chain(args)).unwrap().options;
        assert_eq!((burst.broker, burst.kafka_broker.as_deref()), (None, Some("127.0.0.1:4001")));
    }

    #[test]
    fn the_broker_endpoint_is_read_off_its_startup_line() {
        let line = "ringbroker listening on 127.0.0.1:40001 shards=2 cpus=[0, 1] metrics=off \
                    kafka=127.0.0.1:40005 kafka_ports=[40006, 40007] shard_ports=[40002, 40003]";
        assert_eq!(
            Endpoint::from_startup_line(line, Protocol::Native),
            Some(Endpoint::Native("127.0.0.1:40001".into()))
        );
        assert_eq!(Endpoint::from_startup_line(line, Protocol::Kafka), Some(Endpoint::Kafka("127.0.0.1:40005".into())));
        let no_kafka = line.replace("kafka=127.0.0.1:40005", "kafka=off");
        assert_eq!(Endpoint::from_startup_line(&no_kafka, Protocol::Kafka), None);
        assert_eq!(Endpoint::from_startup_line("WARN something else", Protocol::Native), None);
    }

    #[test]
    fn a_shards_cpu_is_the_sum_of_its_threads() {
        let threads: Vec<(String, f64)> =
            [("ringbroker", 0.1), ("shard-0-1", 1.0), ("shard-0-1", 0.25), ("shard-1-2", 0.5)]
                .into_iter()
                .chain([("shard-10-11", 9.0), ("iou-wrk-7", 3.0)])
                .map(|(name, seconds)| (name.to_string(), seconds))
                .collect();
        assert_eq!(per_shard(&threads, 2), [1.25, 0.5]);
    }

    #[test]
    fn shard_cpu_measured_outside_replaces_the_reports() {
        let cpu = ShardCpu::over(&[1.0, 0.5], 2.0);
        assert_eq!(cpu, ShardCpu { busy_percent: vec![50.0, 25.0], seconds: 1.5 });
    }

    #[test]
    fn per_core_figures_and_efficiency_come_from_the_reports() {
        let report = |events_per_s: f64, busy: Vec<f64>| BurstReport {
            throughput: Throughput {
                produce_s: Some(2.0),
                produce_events_per_s: Some(events_per_s),
                produce_mb_per_s: Some(events_per_s * 1e-4),
                consume_s: None,
                consume_events_per_s: None,
                consume_mb_per_s: None,
                drain_after_last_ack_s: None,
            },
            latency: BTreeMap::new(),
            shard_busy_percent: Some(busy),
            wall_s: 2.0,
        };
        let mut rows: Vec<Row> = [(1, report(1e6, vec![50.0])), (2, report(1.5e6, vec![60.0, 40.0]))]
            .into_iter()
            .map(|(shards, report)| {
                let mut row = Row { shards, ..Row::default() };
                measure(&mut row, &report, None);
                row
            })
            .collect();
        rows.push(Row { shards: 4, skipped: Some("no CPU".into()), ..Row::default() });
        set_efficiency(&mut rows);
        // 2 M events over 1 shard CPU second; 3 M over 2.
        assert_eq!(rows[0].events_per_busy_core_s, Some(2e6));
        assert_eq!(rows[1].events_per_busy_core_s, Some(1.5e6));
        assert_eq!((rows[0].efficiency, rows[1].efficiency, rows[2].efficiency), (Some(1.0), Some(0.75), None));
        assert_eq!(mean_and_range(&rows[1].shard_busy_percent), "50 (40-60)");
        // A broker process's shard CPU, measured outside, wins over the
        // report's: 3 M events over 1.5 CPU seconds.
        let mut outside = Row { shards: 2, ..Row::default() };
        measure(&mut outside, &report(1.5e6, vec![]), Some(ShardCpu::over(&[1.0, 0.5], 2.0)));
        assert_eq!(outside.shard_busy_percent, [50.0, 25.0]);
        assert_eq!(outside.events_per_busy_core_s, Some(2e6));
        let sweep = Sweep {
            cpus: vec![0, 1, 2],
            tuning: "test".into(),
            broker: "embedded".into(),
            events: 1,
            event_bytes: 100,
            partitions_per_shard: 4,
            producers_per_shard: 2,
            rows,
        };
        let text = table(&sweep);
        assert!(text.contains("     4 skipped: no CPU"), "{text}");
    }
}
