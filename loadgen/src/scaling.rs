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

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use ringbroker::config::format_cpu_list;
use serde::{Deserialize, Serialize};

use crate::report::{Percentiles, Throughput};
use crate::scenario::Scenario;
use crate::{Cli, Options};

/// `scaling`'s own options; the rest are the global ones.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingArgs {
    /// Shard counts to run, e.g. 1,2,4,8 [default: 1, 2, 4, ... while a CPU
    /// is left for loadgen].
    #[arg(long, value_delimiter = ',')]
    shards: Option<Vec<usize>>,
}

/// The whole sweep, as `--json` writes it.
#[derive(Debug, Serialize)]
struct Sweep {
    /// The CPUs the sweep used: shards first, loadgen the rest.
    cpus: Vec<usize>,
    /// The base tuning file (its shards.cpus replaced in every row).
    tuning: String,
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
        check_burst(&burst_args(options, &row))?;
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
        let mut burst = burst_args(options, &row);
        eprintln!("scaling: {shards} shard{plural}: loadgen {}", shown(&burst));
        let json = reports.path().join(format!("shards-{shards}.json"));
        burst.extend(["--json".into(), json.clone().into()]);
        let output = Command::new(&exe)
            .args(&burst)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
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
            measure(&mut row, &report);
        }
        rows.push(row);
    }
    set_efficiency(&mut rows);
    let sweep = Sweep {
        cpus,
        tuning,
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
/// the per-shard counts multiplied by the shards, the row's CPUs.
fn burst_args(options: &Options, row: &Row) -> Vec<OsString> {
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
    if let Some(tuning) = &options.tuning {
        set("--tuning", tuning.display().to_string());
    }
    set("--shard-cpus", format_cpu_list(&row.shard_cpus));
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

/// Fills in what the row's burst measured.
fn measure(row: &mut Row, report: &BurstReport) {
    let throughput = &report.throughput;
    row.events_per_s = throughput.produce_events_per_s;
    row.mb_per_s = throughput.produce_mb_per_s;
    row.shard_busy_percent = report.shard_busy_percent.clone().unwrap_or_default();
    if let Some(ack) = report.latency.get("ack") {
        row.ack_p99_us = Some(ack.p99_us);
        row.ack_p99_9_us = Some(ack.p99_9_us);
    }
    // Busy shares are over the whole run (to the consumers' catching up),
    // so the CPU seconds are too.
    let shard_cpu_s = row.shard_busy_percent.iter().sum::<f64>() / 100.0 * report.wall_s;
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
         each row  {} events of {} B, {} partitions and {} producers per shard\n",
        format_cpu_list(&sweep.cpus),
        sweep.tuning,
        sweep.events,
        sweep.event_bytes,
        sweep.partitions_per_shard,
        sweep.producers_per_shard,
    );
    let _ = writeln!(
        text,
        "{:>6} {:>12} {:>11} {:>8} {:>16} {:>14} {:>11} {:>12} {:>10}",
        "shards",
        "loadgen CPUs",
        "events/s",
        "MB/s",
        "shard busy %",
        "per busy core",
        "ack p99 ms",
        "ack p99.9 ms",
        "efficiency"
    );
    let number = |value: Option<f64>, decimals: usize| value.map_or("-".into(), |value| format!("{value:.decimals$}"));
    let ms = |us: Option<u64>| number(us.map(|us| us as f64 / 1e3), 3);
    for row in &sweep.rows {
        if let Some(reason) = &row.skipped {
            let _ = writeln!(text, "{:>6} skipped: {reason}", row.shards);
            continue;
        }
        let line = format!(
            "{:>6} {:>12} {:>11} {:>8} {:>16} {:>14} {:>11} {:>12} {:>10}",
            row.shards,
            format_cpu_list(&row.loadgen_cpus),
            number(row.events_per_s, 0),
            number(row.mb_per_s, 1),
            busy(&row.shard_busy_percent),
            number(row.events_per_busy_core_s, 0),
            ms(row.ack_p99_us),
            ms(row.ack_p99_9_us),
            number(row.efficiency, 2),
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
         (1.00 = linear).\n",
    );
    text
}

/// Mean busy share, with the range when there are several shards.
fn busy(shards: &[f64]) -> String {
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
        let args = burst_args(&options, &row);
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
                measure(&mut row, &report);
                row
            })
            .collect();
        rows.push(Row { shards: 4, skipped: Some("no CPU".into()), ..Row::default() });
        set_efficiency(&mut rows);
        // 2 M events over 1 shard CPU second; 3 M over 2.
        assert_eq!(rows[0].events_per_busy_core_s, Some(2e6));
        assert_eq!(rows[1].events_per_busy_core_s, Some(1.5e6));
        assert_eq!((rows[0].efficiency, rows[1].efficiency, rows[2].efficiency), (Some(1.0), Some(0.75), None));
        assert_eq!(busy(&rows[1].shard_busy_percent), "50 (40-60)");
        let sweep = Sweep {
            cpus: vec![0, 1, 2],
            tuning: "test".into(),
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
