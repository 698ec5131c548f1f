//! `loadgen`: drives a ringbroker with events and reports what it measured.
//!
//! Thread-per-core like the broker: one glommio executor pinned to each
//! `--cpus` entry, each with its own client, producers and consumers. With
//! no `--broker` it starts a broker in this process (tuning from
//! `tuning/dev-2core.toml`, data in a temp dir) so that
//! `cargo run --release -p loadgen` alone demonstrates the product.
//!
//! Module map: `scenario` (settings, plan, the run), `worker` (one
//! executor's producers, consumers and group members), `acks` (exact ack timing), `schedule` (open-loop send times),
//! `payload` (event header, gap/duplicate tracker), `metrics` (per-thread
//! histograms and time series, merging), `report` (table, JSON, `.hgrm`),
//! `svg` (the picture), `clock`, `cpustat` (per-thread CPU use),
//! `scaling` (the same burst at 1, 2, 4, ... shards, one table).

mod acks;
mod clock;
mod cpustat;
mod kafka;
mod kafka_group;
mod link;
mod metrics;
mod payload;
mod report;
mod scaling;
mod scenario;
mod schedule;
mod svg;
mod worker;

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ringbroker::protocol::batch::Compression;
use ringbroker::protocol::types::AckLevel;

use link::Protocol;
use report::Report;
use ringbroker::config::{CpuSelection, KafkaMode};
use scenario::{Scenario, Settings, Target};

/// Default burst size: about 10 s on the 2-core development VM (broker on
/// one core, loadgen on the other, ~2 M events/s of 100 B), long enough for
/// a per-second series that shows a steady state. The 5,000,000 is
/// over in under 3 s there.
const BURST_EVENTS: u64 = 20_000_000;
/// Events of a default `fanout` run (each delivered to every group): about
/// 10 s on the dev VM (one producer, ~1 M events/s).
const FANOUT_EVENTS: u64 = 10_000_000;
const FANOUT_GROUPS: u32 = 3;
/// Events of a default `pipeline` run (each written and read once per
/// stage): about 10 s on the dev VM (the chain moves ~0.4-0.6 M events/s).
const PIPELINE_EVENTS: u64 = 6_000_000;
const PIPELINE_STAGES: u32 = 3;
/// Producers when --producers is not given; `fanout` and `pipeline` have one.
const PRODUCERS: u32 = 2;
const STEADY_RATE: u64 = 100_000;
const STEADY_DURATION_S: f64 = 10.0;
const PEAKS_RATE: u64 = 200_000;
const PEAKS_VALLEY_RATE: u64 = 20_000;
const PEAKS_PEAK_S: f64 = 2.0;
const PEAKS_VALLEY_S: f64 = 3.0;
const PEAKS_DURATION_S: f64 = 20.0;
/// Between the valley and the peak rate, so backlog builds in every peak
/// and drains in every valley.
const PEAKS_CONSUMER_RATE: u64 = 100_000;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator and tail-latency reporter for ringbroker",
    long_about = "Load generator and tail-latency reporter for ringbroker.\n\n\
        With no scenario it runs `burst`; with no --broker it starts an embedded broker \
        (tuning/dev-2core.toml: broker on CPU 0) and pins its own executors to CPU 1.\n\n\
        Every event carries its producer id, sequence number and send time; consumers \
        check for gaps and duplicates while latencies are measured.",
    after_help = "Exit status: 0 ok; 1 the run failed or did not complete; \
        2 acknowledged events are missing; 3 duplicated or foreign events."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Command>,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// N events (--events) as fast as the broker acknowledges them, consumers
    /// draining concurrently (the default scenario).
    Burst,
    /// Open loop at --rate events/s for --duration-s: latency counted from each
    /// event's intended send time (coordinated-omission corrected).
    Steady,
    /// Alternating peaks (--rate for --peak-s) and valleys (--valley-rate for
    /// --valley-s) against consumers throttled to --consumer-rate: the lag
    /// series shows the broker absorbing each peak.
    Peaks,
    /// One producer (--producers) sends --events to a topic read by --groups
    /// consumer groups of --consumers members each: every group must receive
    /// every event; gaps, duplicates and end-to-end latency per group.
    Fanout,
    /// Events pass --stages topics: a producer writes stage 0; each stage is a
    /// consumer group whose members forward every event to the next stage's
    /// topic (committing once the forward is acknowledged); the last stage's
    /// group measures end-to-end latency across the whole chain.
    Pipeline,
    /// The same burst against an embedded broker with 1, 2, 4, ... shards
    /// (the first CPUs of --cpus), loadgen on the CPUs left, each row in a
    /// fresh loadgen process; one table of events/s, MB/s, shard busy %,
    /// events per busy shard core, ack p99/p99.9 and efficiency relative
    /// to the row with the fewest shards, to choose `shards.cpus` by. --partitions, --producers
    /// and --consumers are per shard here; --events is per row.
    Scaling(scaling::ScalingArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KafkaModeArg {
    PerShard,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Acks {
    None,
    Written,
    Durable,
}

#[derive(Debug, Args)]
struct Options {
    /// burst, fanout, pipeline: events to send [default: burst 20000000,
    /// fanout 10000000, pipeline 6000000].
    #[arg(long, global = true)]
    events: Option<u64>,
    /// Bytes per event value (at least 24: the event header).
    #[arg(long, global = true, default_value_t = 100)]
    size: usize,
    /// Partitions per topic (scaling: per shard).
    #[arg(long, global = true, default_value_t = 4)]
    partitions: u32,
    /// Producers [default: 2; fanout and pipeline: 1] (scaling: per shard).
    #[arg(long, global = true)]
    producers: Option<u32>,
    /// Partition consumers, each reading its share of the partitions
    /// [default: one per partition]; fanout and pipeline: members per
    /// consumer group [default: 1]; scaling: per shard.
    #[arg(long, global = true)]
    consumers: Option<u32>,
    /// fanout: consumer groups reading the topic [default: 3].
    #[arg(long, global = true)]
    groups: Option<u32>,
    /// pipeline: topics (and consumer groups) in the chain; every stage but
    /// the last forwards to the next [default: 3].
    #[arg(long, global = true)]
    stages: Option<u32>,
    #[arg(long, global = true, value_enum, default_value_t = Acks::Durable)]
    acks: Acks,
    /// A producer sends a partition's batch once it holds this many bytes
    /// [default: room for 256 events, at least 64 KiB and at most 1 MiB:
    /// 64 KiB for 100 B events, 256 KiB for 1 KiB events].
    #[arg(long, global = true)]
    batch_bytes: Option<usize>,
    /// ...or this long after its first record.
    #[arg(long, global = true, default_value_t = 1.0)]
    linger_ms: f64,
    /// Produce requests in flight per producer (its buffer is this many batches).
    #[arg(long, global = true, default_value_t = 16)]
    max_in_flight: usize,
    /// Producers compress their batches: none, gzip, snappy, lz4 or zstd.
    /// Event padding is a repeating pattern, which compresses far better
    /// than real data: the savings are a best case, the codec's CPU cost
    /// is real.
    #[arg(long, global = true, default_value = "none")]
    compression: Compression,
    /// Idempotent producers (the client's default): a producer id, sequence
    /// numbers per partition, at most 5 requests in flight per partition,
    /// retries that are stored once. `--idempotent false` turns it off.
    #[arg(long, global = true, default_value_t = true, action = clap::ArgAction::Set)]
    idempotent: bool,
    /// A config of the run's topics, set after they are created (Kafka's
    /// names: compression.type=zstd makes the broker recompress,
    /// message.timestamp.type=LogAppendTime makes it stamp); repeatable.
    #[arg(long = "topic-config", global = true, value_name = "KEY=VALUE", value_parser = key_value)]
    topic_configs: Vec<(String, String)>,
    /// Speak TLS to the broker's native listeners, trusting the CA
    /// certificates in this PEM file (the broker's certificate must name
    /// its IP). For an embedded broker, give a --tuning file with [tls].
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// steady: events/s [default: 100000]; peaks: the peak rate [default:
    /// 200000]; fanout, pipeline: send open loop at this rate, --events in
    /// all [default: as fast as acked].
    #[arg(long, global = true)]
    rate: Option<u64>,
    /// steady [default: 10] and peaks [default: 20]: seconds of load.
    #[arg(long, global = true)]
    duration_s: Option<f64>,
    /// peaks: the valley rate in events/s [default: 20000].
    #[arg(long, global = true)]
    valley_rate: Option<u64>,
    /// peaks: seconds per peak [default: 2].
    #[arg(long, global = true)]
    peak_s: Option<f64>,
    /// peaks: seconds per valley [default: 3].
    #[arg(long, global = true)]
    valley_s: Option<f64>,
    /// Throttle all consumers together to this many events/s
    /// [default: unthrottled; peaks: 100000].
    #[arg(long, global = true)]
    consumer_rate: Option<u64>,
    /// Topics are named <prefix>-<scenario>-<unix ms> (pipeline: with
    /// -stage-<i> appended; consumer groups: with -group-<k>).
    #[arg(long, global = true, default_value = "loadgen")]
    topic_prefix: String,
    /// A running broker (host:port); absent: start an embedded one.
    #[arg(long, global = true)]
    broker: Option<String>,
    /// What producers and consumers speak: the native protocol, or the Kafka
    /// API through loadgen's own Kafka client (burst, steady, peaks; fanout
    /// and pipeline use consumer groups, which run over native only).
    /// Topics are created and broker counters read natively either way.
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    /// With --broker: the broker's Kafka bootstrap address
    /// [default: --broker's host, port 9092].
    #[arg(long, global = true)]
    kafka_broker: Option<String>,
    /// The embedded broker's Kafka mode [default: the tuning file's]:
    /// per-shard (each shard a Kafka broker of its own) or node (one
    /// advertised broker, shards forward).
    #[arg(long, global = true, value_enum)]
    kafka_mode: Option<KafkaModeArg>,
    /// The embedded broker's tuning file [default: tuning/dev-2core.toml,
    /// else built-in defaults on CPU 0].
    #[arg(long, global = true)]
    tuning: Option<PathBuf>,
    /// The embedded broker's shard CPUs, e.g. 0 or 0-3 [default: the
    /// tuning file's shards.cpus].
    #[arg(long, global = true)]
    shard_cpus: Option<String>,
    /// CPUs for loadgen's executors, one pinned executor each, e.g. 1 or 2-3
    /// [default: CPU 1 if this process may use two or more CPUs, else 0];
    /// scaling: the CPUs of the whole sweep, shards first [default: all
    /// this process may use].
    #[arg(long, global = true)]
    cpus: Option<String>,
    /// Write the report as JSON (scaling: the table).
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write ack.hgrm (and its parts: ack_to_seal, ack_dispatch,
    /// ack_round_trip, ack_delivery), e2e.hgrm and send_delay.hgrm
    /// percentile files here (fanout and pipeline: also e2e-group-<k>.hgrm /
    /// e2e-stage-<i>.hgrm).
    #[arg(long, global = true)]
    hgrm_dir: Option<PathBuf>,
    /// Write the latency spectrum and time series as an SVG picture.
    #[arg(long, global = true)]
    svg: Option<PathBuf>,
    /// The same picture inside an HTML page.
    #[arg(long, global = true)]
    html: Option<PathBuf>,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long, global = true)]
    no_progress: bool,
    /// Seconds consumers may take to catch up after the producers finish.
    #[arg(long, global = true, default_value_t = 60.0)]
    drain_timeout_s: f64,
    /// glommio io_memory per loadgen executor (bytes).
    #[arg(long, global = true, default_value_t = 1 << 20)]
    io_memory_bytes: usize,
    /// Microseconds a loadgen executor with nothing to do polls for work
    /// before it parks (sleeps in the kernel); 0: park at once.
    #[arg(long, global = true, default_value_t = 0)]
    spin_us: u64,
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let scenario = match cli.scenario.unwrap_or(Command::Burst) {
        Command::Burst => Scenario::Burst,
        Command::Steady => Scenario::Steady,
        Command::Peaks => Scenario::Peaks,
        Command::Fanout => Scenario::Fanout,
        Command::Pipeline => Scenario::Pipeline,
        Command::Scaling(args) => return scaling::run(&args, &cli.options),
    };
    let options = cli.options;
    let settings = settings(scenario, &options)?;
    let target = match &options.broker {
        Some(broker) => {
            if options.tuning.is_some() || options.kafka_mode.is_some() || options.shard_cpus.is_some() {
                eprintln!(
                    "loadgen: --tuning, --kafka-mode and --shard-cpus only apply to an embedded broker; ignored with --broker"
                );
            }
            let native = resolve("--broker", broker)?;
            let kafka = match &options.kafka_broker {
                Some(kafka) => resolve("--kafka-broker", kafka)?,
                None => SocketAddr::new(native.ip(), ringbroker::config::KAFKA_LISTEN_DEFAULT.port()),
            };
            Target::Remote { native, kafka }
        }
        None => {
            let (mut config, source) = scenario::load_tuning(options.tuning.as_deref())?;
            match options.kafka_mode {
                Some(KafkaModeArg::PerShard) => config.kafka.mode = KafkaMode::PerShard,
                Some(KafkaModeArg::Node) => config.kafka.mode = KafkaMode::Node,
                None => {}
            }
            if let Some(list) = &options.shard_cpus {
                let cpus = ringbroker::config::parse_cpu_list(list).context("--shard-cpus")?;
                config.shards.cpus = CpuSelection::List(cpus);
            }
            if options.protocol == Protocol::Kafka {
                config.kafka.enabled = true;
            }
            Target::Embedded { config: Box::new(config), source, data_parent: data_parent() }
        }
    };
    let show_progress = !options.no_progress && std::io::stderr().is_terminal();
    let outcome = scenario::run(&settings, target, show_progress)?;
    let report = Report::build(&outcome);
    report.print(&mut std::io::stdout().lock()).context("writing the report")?;
    write_outputs(&options, &outcome, &report)?;
    Ok(report.exit_code())
}

/// Resolves the options into settings, with each scenario's defaults.
fn settings(scenario: Scenario, options: &Options) -> anyhow::Result<Settings> {
    let allowed = ringbroker::config::allowed_cpus()?;
    let loadgen_cpus = match &options.cpus {
        Some(list) => {
            let cpus = ringbroker::config::parse_cpu_list(list)?;
            if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
                let allowed = ringbroker::config::format_cpu_list(&allowed);
                bail!("--cpus: CPU {cpu} is not available to this process (allowed: {allowed})");
            }
            cpus
        }
        None => scenario::default_loadgen_cpus(&allowed),
    };
    let peaks = scenario == Scenario::Peaks;
    let grouped = scenario.uses_groups();
    let acks = match options.acks {
        Acks::None => AckLevel::None,
        Acks::Written => AckLevel::Written,
        Acks::Durable => AckLevel::Durable,
    };
    Ok(Settings {
        scenario,
        protocol: options.protocol,
        events: options.events.unwrap_or(match scenario {
            Scenario::Fanout => FANOUT_EVENTS,
            Scenario::Pipeline => PIPELINE_EVENTS,
            _ => BURST_EVENTS,
        }),
        event_bytes: options.size,
        partitions: options.partitions,
        producers: options.producers.unwrap_or(if grouped { 1 } else { PRODUCERS }),
        consumers: options.consumers.unwrap_or(if grouped { 1 } else { options.partitions }),
        groups: options.groups.unwrap_or(FANOUT_GROUPS),
        stages: options.stages.unwrap_or(PIPELINE_STAGES),
        acks,
        batch_bytes: options.batch_bytes.unwrap_or_else(|| default_batch_bytes(options.size)),
        linger_ms: options.linger_ms,
        max_in_flight: options.max_in_flight,
        compression: options.compression,
        idempotent: options.idempotent,
        topic_configs: options.topic_configs.clone(),
        tls_ca: options.tls_ca.clone(),
        // 0: fanout and pipeline send as fast as acked.
        rate: options.rate.unwrap_or(if grouped {
            0
        } else if peaks {
            PEAKS_RATE
        } else {
            STEADY_RATE
        }),
        duration_s: options.duration_s.unwrap_or(if peaks { PEAKS_DURATION_S } else { STEADY_DURATION_S }),
        valley_rate: options.valley_rate.unwrap_or(PEAKS_VALLEY_RATE),
        peak_s: options.peak_s.unwrap_or(PEAKS_PEAK_S),
        valley_s: options.valley_s.unwrap_or(PEAKS_VALLEY_S),
        consumer_rate: options.consumer_rate.or(peaks.then_some(PEAKS_CONSUMER_RATE)),
        topic_prefix: options.topic_prefix.clone(),
        loadgen_cpus,
        drain_timeout_s: options.drain_timeout_s,
        io_memory_bytes: options.io_memory_bytes,
        spin: std::time::Duration::from_micros(options.spin_us),
    })
}

/// Batches of a few hundred events whatever their size: a produce request
/// has a fixed cost (a round trip, a group commit to wait for), and with
/// 1 KiB events a 64 KiB batch of 63 events left the producers' in-flight
/// window, not the broker, setting the pace (~400 MB/s against ~550 MB/s
/// with 256 KiB batches on the development VM).
fn default_batch_bytes(event_bytes: usize) -> usize {
    event_bytes.saturating_mul(256).clamp(64 << 10, 1 << 20)
}

fn resolve(flag: &str, broker: &str) -> anyhow::Result<SocketAddr> {
    broker
        .to_socket_addrs()
        .with_context(|| format!("{flag} {broker:?}: expected host:port"))?
        .next()
        .with_context(|| format!("{flag} {broker:?} resolves to no address"))
}

/// The embedded broker's data goes on the real disk: `target/` when run
/// from the workspace (cargo run), else the system temp dir.
fn data_parent() -> PathBuf {
    // Absolute, so nothing depends on the broker's working directory.
    Path::new("target").canonicalize().ok().filter(|target| target.is_dir()).unwrap_or_else(std::env::temp_dir)
}

fn write_outputs(options: &Options, outcome: &scenario::Outcome, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &options.json {
        report.write_json(path).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    if let Some(dir) = &options.hgrm_dir {
        let written = report::write_hgrm_files(outcome, dir).with_context(|| format!("writing {}", dir.display()))?;
        for path in written {
            eprintln!("loadgen: wrote {}", path.display());
        }
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, svg::render(outcome, report)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    if let Some(path) = &options.html {
        std::fs::write(path, svg::render_html(outcome, report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    Ok(())
}

/// Parses `KEY=VALUE`.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed_and_defaults_to_burst() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["loadgen"]).unwrap();
        assert!(cli.scenario.is_none());
        let burst = settings(Scenario::Burst, &cli.options).unwrap();
        assert_eq!((burst.events, burst.event_bytes, burst.acks), (BURST_EVENTS, 100, AckLevel::Durable));
        assert_eq!(burst.consumers, burst.partitions);
        // Options work before or after the scenario name.
        let cli = Cli::try_parse_from(["loadgen", "--size", "1024", "peaks", "--rate", "5"]).unwrap();
        let peaks = settings(Scenario::Peaks, &cli.options).unwrap();
        assert_eq!((peaks.event_bytes, peaks.rate), (1024, 5));
        // Batches hold 256 events by default, within 64 KiB..1 MiB.
        assert_eq!((burst.batch_bytes, peaks.batch_bytes), (64 << 10, 256 << 10));
        let cli = Cli::try_parse_from(["loadgen", "--size", "65536", "--batch-bytes", "1000"]).unwrap();
        assert_eq!(settings(Scenario::Burst, &cli.options).unwrap().batch_bytes, 1000);
        assert_eq!(default_batch_bytes(65536), 1 << 20);
        assert_eq!(peaks.consumer_rate, Some(PEAKS_CONSUMER_RATE));
        let cli = Cli::try_parse_from(["loadgen", "fanout", "--groups", "5"]).unwrap();
        let fanout = settings(Scenario::Fanout, &cli.options).unwrap();
        assert_eq!((fanout.events, fanout.groups, fanout.producers, fanout.consumers), (FANOUT_EVENTS, 5, 1, 1));
        let cli = Cli::try_parse_from(["loadgen", "pipeline", "--consumers", "2"]).unwrap();
        let pipeline = settings(Scenario::Pipeline, &cli.options).unwrap();
        assert_eq!((pipeline.events, pipeline.stages, pipeline.consumers), (PIPELINE_EVENTS, PIPELINE_STAGES, 2));
    }
}
