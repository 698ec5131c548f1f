//! The scenarios and the run around them: settings, the embedded broker,
//! topic creation, the plan each executor follows, the executors themselves,
//! the progress bar, and the merge of what they measured.
//!
//! - `burst`: N events as fast as the broker takes them (closed loop, bounded
//!   by the producer's buffer), consumers draining concurrently.
//! - `steady`: open loop at a fixed rate; latency from intended send times.
//! - `peaks`: open loop alternating a peak above the consumers' (throttled)
//!   rate and a valley below it; the lag series shows the backlog building
//!   and draining.
//! - `fanout`: a burst (open loop with `--rate`) into one topic read by K
//!   consumer groups; every group must receive every event (a gap/duplicate
//!   tracker and an end-to-end histogram per group).
//! - `pipeline`: a burst (or open loop) into `stage-0`; the group of stage i
//!   forwards each event to `stage-(i+1)`, the last stage's group measures
//!   end-to-end latency across the chain from the original send time.
//!
//! Consumer groups join before the run starts and the run starts only once
//! every group is stable (each member settled, every partition owned), so
//! no measurement includes the initial rebalance.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use indicatif::{ProgressBar, ProgressStyle};
use ringbroker::client::{Client, ClientError, ClientOptions, ClientTls, ProducerConfig};
use ringbroker::config::{CpuSelection, KafkaMode, TuningConfig};
use ringbroker::protocol::batch::Compression;
use ringbroker::protocol::types::AckLevel;
use ringbroker::server::{Broker, ShardPorts};
use serde::Serialize;

use crate::clock::{self, Clock};
use crate::cpustat::{self, ThreadCpu};
use crate::link::Protocol;
use crate::metrics::Measurements;
use crate::schedule::{self, Phase, Schedule};
use crate::worker::{self, ConsumerPlan, GroupPlan, GroupRole, Plan, ProducerPlan, Shared};

const NS_PER_S: f64 = 1e9;

/// Which scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Burst,
    Steady,
    Peaks,
    Fanout,
    Pipeline,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::Steady => "steady",
            Scenario::Peaks => "peaks",
            Scenario::Fanout => "fanout",
            Scenario::Pipeline => "pipeline",
        }
    }

    /// Consumed by consumer groups rather than partition consumers.
    pub fn uses_groups(self) -> bool {
        matches!(self, Scenario::Fanout | Scenario::Pipeline)
    }
}

/// Every setting of a run, defaults resolved (also the JSON report's
/// `config`).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub scenario: Scenario,
    /// What producers and consumers speak to the broker.
    pub protocol: Protocol,
    /// burst, fanout, pipeline: events to send; open-loop scenarios: ignored
    /// (rate x duration).
    pub events: u64,
    pub event_bytes: usize,
    /// Per topic.
    pub partitions: u32,
    pub producers: u32,
    /// Partition consumers; fanout and pipeline: members per consumer group.
    pub consumers: u32,
    /// fanout: consumer groups.
    pub groups: u32,
    /// pipeline: topics in the chain, each read by one consumer group.
    pub stages: u32,
    pub acks: AckLevel,
    pub batch_bytes: usize,
    pub linger_ms: f64,
    pub max_in_flight: usize,
    /// Producers' batch codec.
    pub compression: Compression,
    pub idempotent: bool,
    /// Set on the run's topics once created.
    pub topic_configs: Vec<(String, String)>,
    /// TLS to the native listeners, trusting these CA certificates.
    pub tls_ca: Option<std::path::PathBuf>,
    /// steady: the rate; peaks: the peak rate (events/s, all producers);
    /// fanout, pipeline: open loop at this rate, 0: as fast as acked.
    pub rate: u64,
    pub duration_s: f64,
    pub valley_rate: u64,
    pub peak_s: f64,
    pub valley_s: f64,
    /// All consumers together; `None`: unthrottled.
    pub consumer_rate: Option<u64>,
    pub topic_prefix: String,
    pub loadgen_cpus: Vec<usize>,
    pub drain_timeout_s: f64,
    pub io_memory_bytes: usize,
    /// How long an idle loadgen executor spins before it parks.
    pub spin: Duration,
}

/// Where the broker comes from.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running broker: its native address (topics are created and its
    /// counters read there) and its Kafka bootstrap address.
    Remote { native: SocketAddr, kafka: SocketAddr },
    /// Start one in this process with `config` (its data dir and listen
    /// address are replaced), data in a temp dir under `data_parent`.
    Embedded { config: Box<TuningConfig>, source: String, data_parent: PathBuf },
}

/// The broker side of the report header.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerInfo {
    pub mode: &'static str,
    pub addr: SocketAddr,
    /// The Kafka bootstrap address, if it serves Kafka (remote: as given).
    pub kafka: Option<SocketAddr>,
    /// How its shards are advertised to Kafka clients, when embedded.
    pub kafka_mode: Option<&'static str>,
    /// Shard CPUs, when embedded.
    pub cpus: Option<Vec<usize>>,
    /// The tuning file, when embedded.
    pub tuning: Option<String>,
}

/// Where and when the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub date_utc: String,
    /// CPUs online in the machine.
    pub machine_cpus: usize,
    /// CPUs this process may use.
    pub allowed_cpus: Vec<usize>,
    pub broker: BrokerInfo,
    pub loadgen_cpus: Vec<usize>,
    pub topic: String,
}

/// Everything a report is made from.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub settings: Settings,
    pub environment: Environment,
    pub measurements: Measurements,
    pub planned_events: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Busy share of every thread of this process (broker shards included
    /// when embedded) over the run.
    pub cpu: Vec<ThreadCpu>,
    /// What the broker reported about the run; `None` if it could not say.
    pub broker_stats: Option<BrokerStats>,
    /// The consumer groups (fanout, pipeline), indexed like
    /// `measurements.groups`.
    pub groups: Vec<GroupPlan>,
}

/// The broker's own view, from its stats request.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerStats {
    /// How much each counter grew during the run, summed over shards.
    pub counters: BTreeMap<String, u64>,
    /// Each shard's latencies, since the broker started (for an embedded
    /// broker: this run). Per shard, because percentiles of different shards
    /// cannot be combined.
    pub shards: Vec<ShardLatencies>,
}

/// One shard's latencies as (percentile, us): a produce request with acks,
/// from decoded to answered, and the stages of the partition flushes it
/// waits for.
#[derive(Debug, Clone, Serialize)]
pub struct ShardLatencies {
    /// A flush's wait before its write, from its first batch being queued
    /// (mostly the flush in progress).
    pub flush_wait_us: Vec<(f64, u64)>,
    pub write_us: Vec<(f64, u64)>,
    pub fsync_us: Vec<(f64, u64)>,
    /// A produce request's decode to answer.
    pub produce_us: Vec<(f64, u64)>,
    /// A produce request's first bytes read to its answer written.
    pub request_us: Vec<(f64, u64)>,
}

impl Outcome {
    /// Seconds from the start to the last ack.
    pub fn produce_s(&self) -> Option<f64> {
        self.measurements.last_ack_ns.map(|at| at.saturating_sub(self.start_ns) as f64 / NS_PER_S)
    }

    /// Seconds from the start until every partition was consumed to its end.
    pub fn consume_s(&self) -> Option<f64> {
        if self.measurements.partitions_not_caught_up > 0 {
            return None;
        }
        self.measurements.caught_up_ns.map(|at| at.saturating_sub(self.start_ns) as f64 / NS_PER_S)
    }

    /// From the last ack until the consumers had everything.
    pub fn drain_s(&self) -> Option<f64> {
        let caught_up = self.measurements.caught_up_ns?;
        (self.measurements.partitions_not_caught_up == 0)
            .then(|| caught_up.saturating_sub(self.measurements.last_ack_ns.unwrap_or(caught_up)) as f64 / NS_PER_S)
    }
}

/// The loadgen CPUs when none are given: CPU 1 if this process may use two
/// or more CPUs (the dev-2core broker takes CPU 0), else the only one.
pub fn default_loadgen_cpus(allowed: &[usize]) -> Vec<usize> {
    match allowed {
        [] => vec![0],
        [only] => vec![*only],
        [_, second, ..] => vec![*second],
    }
}

/// Finds the embedded broker's tuning: the given file, else
/// `tuning/dev-2core.toml` in the current directory or the workspace this
/// binary was built from, else built-in defaults on CPU 0.
pub fn load_tuning(path: Option<&Path>) -> anyhow::Result<(TuningConfig, String)> {
    if let Some(path) = path {
        return Ok((TuningConfig::load(path)?, path.display().to_string()));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for candidate in [PathBuf::from("tuning/dev-2core.toml"), workspace.join("tuning/dev-2core.toml")] {
        if candidate.is_file() {
            let shown = candidate.canonicalize().unwrap_or(candidate.clone());
            return Ok((TuningConfig::load(&candidate)?, shown.display().to_string()));
        }
    }
    let mut config = TuningConfig::default();
    config.shards.cpus = CpuSelection::List(vec![0]);
    Ok((config, "built-in defaults, cpus = [0] (tuning/dev-2core.toml not found)".into()))
}

/// Checks settings that clap cannot.
pub fn validate(settings: &Settings) -> anyhow::Result<()> {
    if settings.event_bytes < crate::payload::HEADER_BYTES {
        bail!("--size must be at least {} bytes (the event header)", crate::payload::HEADER_BYTES);
    }
    if settings.partitions == 0 || settings.producers == 0 || settings.consumers == 0 {
        bail!("--partitions, --producers and --consumers must be at least 1");
    }
    if settings.consumers > settings.partitions && !settings.scenario.uses_groups() {
        bail!(
            "--consumers {} exceeds --partitions {}: without consumer groups a partition has one consumer",
            settings.consumers,
            settings.partitions
        );
    }
    if settings.loadgen_cpus.is_empty() {
        bail!("--cpus is empty");
    }
    let positive = |value: f64, name: &str| {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{name} must be a positive number of seconds"))
        }
    };
    positive(settings.drain_timeout_s, "--drain-timeout-s")?;
    match settings.scenario {
        Scenario::Burst | Scenario::Fanout | Scenario::Pipeline if settings.events == 0 => {
            bail!("--events must be at least 1")
        }
        Scenario::Burst => Ok(()),
        Scenario::Fanout if settings.groups == 0 => bail!("--groups must be at least 1"),
        Scenario::Fanout => Ok(()),
        Scenario::Pipeline if settings.stages == 0 => bail!("--stages must be at least 1"),
        Scenario::Pipeline if settings.acks == AckLevel::None => {
            bail!("pipeline needs acknowledgements: a stage commits only once its forwards are acknowledged")
        }
        Scenario::Pipeline => Ok(()),
        Scenario::Steady if settings.rate == 0 => bail!("--rate must be at least 1 event/s"),
        Scenario::Steady => positive(settings.duration_s, "--duration-s"),
        Scenario::Peaks => {
            positive(settings.duration_s, "--duration-s")?;
            positive(settings.peak_s, "--peak-s")?;
            if !(settings.valley_s.is_finite() && settings.valley_s >= 0.0) {
                bail!("--valley-s must be zero or more seconds");
            }
            Ok(())
        }
    }
}

/// What each executor runs: producers and consumers (and consumer group
/// members) spread round-robin over the executors, rates and event counts
/// split evenly. `topic` is the run's name: the producers' topic, or with
/// `pipeline` the stem of the stage topics.
pub fn build_plan(settings: &Settings, broker: SocketAddr, tls: Option<ClientTls>, topic: String) -> Plan {
    let executors = settings.loadgen_cpus.len();
    let producers = u64::from(settings.producers);
    let producer_plans = (0..settings.producers)
        .map(|id| {
            let index = u64::from(id);
            let schedule = producer_schedule(settings, index);
            let events = match &schedule {
                None => schedule::share(settings.events, producers, index),
                Some(schedule) => schedule.total_events(),
            };
            ProducerPlan { id, executor: id as usize % executors, events, schedule }
        })
        .collect();
    let (topics, mut groups) = match settings.scenario {
        Scenario::Fanout => {
            let groups = (0..settings.groups)
                .map(|k| GroupPlan {
                    name: format!("{topic}-group-{k}"),
                    label: format!("group {k}"),
                    topic: topic.clone(),
                    role: GroupRole::Fanout,
                    upstream: None,
                    members: Vec::new(),
                })
                .collect();
            (vec![topic], groups)
        }
        Scenario::Pipeline => {
            let topics: Vec<String> = (0..settings.stages).map(|stage| format!("{topic}-stage-{stage}")).collect();
            let last = topics.len() - 1;
            let groups = (0..topics.len())
                .map(|stage| GroupPlan {
                    name: format!("{}-group", topics[stage]),
                    label: format!("stage {stage}"),
                    topic: topics[stage].clone(),
                    role: if stage == last { GroupRole::Last } else { GroupRole::Relay(topics[stage + 1].clone()) },
                    upstream: stage.checked_sub(1),
                    members: Vec::new(),
                })
                .collect();
            (topics, groups)
        }
        _ => (vec![topic], Vec::new()),
    };
    // Members of all groups are dealt round-robin over the executors.
    let mut dealt = 0;
    for group in &mut groups {
        group.members = (0..settings.consumers).map(|member| (dealt + member as usize) % executors).collect();
        dealt += settings.consumers as usize;
    }
    let consumers = if groups.is_empty() { settings.consumers } else { 0 };
    let consumer_plans = (0..consumers)
        .map(|consumer| ConsumerPlan {
            executor: consumer as usize % executors,
            partitions: (0..settings.partitions).filter(|partition| partition % consumers == consumer).collect(),
            events_per_s: settings
                .consumer_rate
                .map(|rate| schedule::share(rate, u64::from(consumers), u64::from(consumer)).max(1)),
        })
        .collect();
    Plan {
        broker,
        tls,
        protocol: settings.protocol,
        topic: topics[0].clone(),
        topics,
        partitions: settings.partitions,
        groups,
        event_bytes: settings.event_bytes,
        producer: ProducerConfig {
            batch_bytes: settings.batch_bytes,
            linger: Duration::from_secs_f64(settings.linger_ms / 1000.0),
            max_in_flight: settings.max_in_flight,
            acks: settings.acks,
            compression: settings.compression,
            idempotent: settings.idempotent,
            ..ProducerConfig::default()
        },
        producers: producer_plans,
        consumers: consumer_plans,
        drain_timeout: Duration::from_secs_f64(settings.drain_timeout_s),
    }
}

/// Producer `index`'s open-loop schedule (`None` for burst). Producers
/// share the rate and are offset by one aggregate interval each, so
/// together they send evenly spaced events.
fn producer_schedule(settings: &Settings, index: u64) -> Option<Schedule> {
    let producers = u64::from(settings.producers);
    let seconds_ns = |seconds: f64| (seconds * NS_PER_S) as u64;
    let offset_ns = |rate: u64| (index * 1_000_000_000).checked_div(rate).unwrap_or(0);
    match settings.scenario {
        Scenario::Burst => None,
        Scenario::Fanout | Scenario::Pipeline if settings.rate == 0 => None,
        Scenario::Fanout | Scenario::Pipeline => {
            // Open loop: this producer's share of --events at its share of
            // the rate, over just long enough for all of them.
            let events = schedule::share(settings.events, producers, index);
            let rate = schedule::share(settings.rate, producers, index).max(1);
            let duration_ns = (u128::from(events) * 1_000_000_000).div_ceil(u128::from(rate)) as u64;
            Some(Schedule::constant(rate, duration_ns, offset_ns(settings.rate)))
        }
        Scenario::Steady => Some(Schedule::constant(
            schedule::share(settings.rate, producers, index),
            seconds_ns(settings.duration_s),
            offset_ns(settings.rate),
        )),
        Scenario::Peaks => {
            let peak = Phase {
                duration_ns: seconds_ns(settings.peak_s),
                events_per_s: schedule::share(settings.rate, producers, index),
            };
            let valley = Phase {
                duration_ns: seconds_ns(settings.valley_s),
                events_per_s: schedule::share(settings.valley_rate, producers, index),
            };
            let phases = schedule::peaks_and_valleys(peak, valley, seconds_ns(settings.duration_s));
            Some(Schedule::new(&phases, offset_ns(settings.rate)))
        }
    }
}

/// Runs one scenario end to end.
pub fn run(settings: &Settings, target: Target, show_progress: bool) -> anyhow::Result<Outcome> {
    validate(settings)?;
    let clock = Clock::start();
    let date_utc = clock::format_utc(clock.origin_unix_us() / 1_000_000);
    let mut embedded = None;
    let broker = match target {
        Target::Remote { native, kafka } => {
            BrokerInfo { mode: "remote", addr: native, kafka: Some(kafka), kafka_mode: None, cpus: None, tuning: None }
        }
        Target::Embedded { config, source, data_parent } => {
            let kafka_mode = config.kafka.enabled.then_some(match config.kafka.mode {
                KafkaMode::PerShard => "per-shard",
                KafkaMode::Node => "node",
            });
            let started = EmbeddedBroker::start(*config, &data_parent)?;
            let info = BrokerInfo {
                mode: "embedded",
                addr: started.addr,
                kafka: started.kafka,
                kafka_mode,
                cpus: Some(started.cpus.clone()),
                tuning: Some(source),
            };
            embedded = Some(started);
            info
        }
    };
    let name = format!("{}-{}-{}", settings.topic_prefix, settings.scenario.name(), clock.origin_unix_us() / 1000);
    let data_addr = match settings.protocol {
        Protocol::Native => broker.addr,
        Protocol::Kafka => broker.kafka.context("--protocol kafka: the broker does not serve the Kafka API")?,
    };
    let tls = match &settings.tls_ca {
        None => None,
        Some(ca) => Some(ClientTls::from_ca_file(ca, &broker.addr.ip().to_string()).context("--tls-ca")?),
    };
    let plan = Arc::new(build_plan(settings, data_addr, tls.clone(), name));
    // Group names follow the topic name rules too.
    for name in plan.topics.iter().chain(plan.groups.iter().map(|group| &group.name)) {
        ringbroker::protocol::types::validate_topic_name(name)
            .map_err(|reason| anyhow::anyhow!("--topic-prefix gives an invalid topic or group name: {reason}"))?;
    }
    let created = create_topics(broker.addr, &tls, &plan.topics, settings.partitions, &settings.topic_configs);
    let result = created.and_then(|()| {
        // Counters are extra insight, not part of the verdict: a broker that
        // cannot report them still gets measured.
        let before = broker_stats(broker.addr, &tls).ok();
        let driven = drive(settings, &plan, clock, show_progress)?;
        let after = broker_stats(broker.addr, &tls).ok();
        let stats = before.zip(after).map(|(before, after)| BrokerStats {
            counters: after
                .counters
                .into_iter()
                .map(|(name, value)| (value.saturating_sub(before.counters.get(&name).copied().unwrap_or(0)), name))
                .map(|(value, name)| (name, value))
                .collect(),
            shards: after.shards,
        });
        Ok((driven, stats))
    });
    if let Some(mut embedded) = embedded {
        embedded.shutdown().context("stopping the embedded broker")?;
    }
    let (driven, broker_stats) = result?;
    let allowed_cpus = ringbroker::config::allowed_cpus().unwrap_or_default();
    let environment = Environment {
        date_utc,
        machine_cpus: std::thread::available_parallelism().map_or(allowed_cpus.len(), |count| count.get()),
        allowed_cpus,
        broker,
        loadgen_cpus: settings.loadgen_cpus.clone(),
        topic: plan.topic.clone(),
    };
    Ok(Outcome {
        settings: settings.clone(),
        environment,
        planned_events: driven.planned_events,
        measurements: driven.measurements,
        start_ns: driven.start_ns,
        end_ns: driven.end_ns,
        cpu: driven.cpu,
        broker_stats,
        groups: plan.groups.clone(),
    })
}

/// A broker in this process, stopped (and its data deleted) on shutdown
/// or drop.
struct EmbeddedBroker {
    broker: Option<Broker>,
    addr: SocketAddr,
    kafka: Option<SocketAddr>,
    cpus: Vec<usize>,
    data: Option<tempfile::TempDir>,
}

impl EmbeddedBroker {
    fn start(mut config: TuningConfig, data_parent: &Path) -> anyhow::Result<EmbeddedBroker> {
        let data = tempfile::Builder::new()
            .prefix("loadgen-broker-")
            .tempdir_in(data_parent)
            .with_context(|| format!("creating a data dir under {}", data_parent.display()))?;
        config.storage.data_dir = data.path().to_path_buf();
        // Any free port: an embedded broker must not collide with a real one.
        config.network.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.kafka.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.kafka.shard_port_base = Some(0);
        let broker = Broker::start(config, ShardPorts::Ephemeral).context("starting the embedded broker")?;
        let (addr, kafka, cpus) = (broker.addr(), broker.kafka_addr(), broker.cpus().to_vec());
        Ok(EmbeddedBroker { broker: Some(broker), addr, kafka, cpus, data: Some(data) })
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(broker) = self.broker.take() {
            broker.stop();
            broker.wait()?;
        }
        if let Some(data) = self.data.take() {
            data.close().context("deleting the embedded broker's data")?;
        }
        Ok(())
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Runs `job` with a client of its own on a short-lived executor (setup
/// and bookkeeping, never the measured work).
fn with_client<T, F, Fut>(addr: SocketAddr, tls: &Option<ClientTls>, job: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, ClientError>> + 'static,
{
    let options = ClientOptions { tls: tls.clone(), ..ClientOptions::default() };
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen-setup")
        .io_memory(64 << 10)
        .spawn(move || async move {
            ringbroker::runtime::spawn_wake_ticker(Duration::from_millis(1));
            job(Client::connect(addr, options).await?).await
        })
        .map_err(|error| anyhow::anyhow!("starting a setup executor: {error}"))?;
    let result = handle.join().map_err(|error| anyhow::anyhow!("setup executor failed: {error}"))?;
    Ok(result?)
}

/// Creates the run's topics, with `configs` set on each.
fn create_topics(
    addr: SocketAddr,
    tls: &Option<ClientTls>,
    topics: &[String],
    partitions: u32,
    configs: &[(String, String)],
) -> anyhow::Result<()> {
    let (topics, configs) = (topics.to_vec(), configs.to_vec());
    with_client(addr, tls, move |client| async move {
        for topic in &topics {
            client.create_topic(topic, partitions).await?;
            if !configs.is_empty() {
                client.alter_configs(topic, configs.clone(), Vec::new(), false).await?;
            }
        }
        Ok(())
    })
    .with_context(|| format!("creating the topics on {addr}"))
}

/// The broker's counters summed over its shards (requests, events,
/// fsyncs...) and each shard's latencies.
fn broker_stats(addr: SocketAddr, tls: &Option<ClientTls>) -> anyhow::Result<BrokerStats> {
    let stats = with_client(addr, tls, |client| async move { client.stats().await })?;
    let mut counters = BTreeMap::new();
    for (name, value) in stats.shards.iter().flat_map(|shard| shard.counters.iter()) {
        *counters.entry(name.clone()).or_insert(0) += value;
    }
    let shards = stats
        .shards
        .into_iter()
        .map(|shard| ShardLatencies {
            flush_wait_us: shard.flush_queue_latency_us,
            write_us: shard.write_latency_us,
            fsync_us: shard.fsync_latency_us,
            produce_us: shard.produce_latency_us,
            request_us: shard.produce_request_latency_us,
        })
        .collect();
    Ok(BrokerStats { counters, shards })
}

/// What the executors produced, merged.
struct Driven {
    measurements: Measurements,
    planned_events: u64,
    start_ns: u64,
    end_ns: u64,
    cpu: Vec<ThreadCpu>,
}

/// Starts the executors, releases them together, shows progress, and
/// merges their measurements.
fn drive(settings: &Settings, plan: &Arc<Plan>, clock: Clock, show_progress: bool) -> anyhow::Result<Driven> {
    let shared = Arc::new(Shared::new(plan));
    // Whatever happens below, executors waiting to start or to exit are let go.
    let _release = Release(Arc::clone(&shared), clock);
    let mut handles = Vec::new();
    for (index, &cpu) in settings.loadgen_cpus.iter().enumerate() {
        let spawned = worker::spawn(
            index,
            cpu,
            settings.io_memory_bytes,
            settings.spin,
            Arc::clone(plan),
            Arc::clone(&shared),
            clock,
        );
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                shared.abort();
                return Err(error).with_context(|| format!("starting the loadgen executor on CPU {cpu}"));
            }
        }
    }
    while shared.ready.load(Ordering::SeqCst) < handles.len() && !shared.is_aborted() {
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_for_stable_groups(plan, &shared)?;
    let planned_events = plan.planned().iter().sum();
    let cpu_before = cpustat::Snapshot::take();
    let start_ns = clock.now_ns().max(1);
    shared.start_ns.store(start_ns, Ordering::SeqCst);
    let bar = progress_bar(show_progress, planned_events);
    while shared.workers_done.load(Ordering::SeqCst) < handles.len() {
        std::thread::sleep(Duration::from_millis(100));
        update_progress(&bar, &shared, settings.acks, clock.now_ns().saturating_sub(start_ns));
    }
    bar.finish_and_clear();
    let end_ns = clock.now_ns();
    let cpu = cpustat::Snapshot::take().busy_since(&cpu_before, end_ns.saturating_sub(start_ns) as f64 / NS_PER_S);
    shared.released.store(true, Ordering::SeqCst);
    let mut measurements = Measurements::for_plan(start_ns, plan);
    for (index, handle) in handles.into_iter().enumerate() {
        let theirs = handle.join().map_err(|error| anyhow::anyhow!("loadgen executor {index} failed: {error}"))?;
        measurements.merge(&theirs);
    }
    // The run's end-to-end latency is that of the deliveries at the end of
    // the flow: every fanout group, the last pipeline stage.
    for (group, measured) in plan.groups.iter().zip(&measurements.groups) {
        if group.role.is_end() {
            crate::metrics::merge_into(&mut measurements.e2e, &measured.e2e);
        }
    }
    Ok(Driven { measurements, planned_events, start_ns, end_ns, cpu })
}

/// How long consumer groups may take to settle before the run starts.
const GROUPS_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long every group must look settled, so that a member's stale view
/// (it has not heard of a newer generation yet) is not taken for stability.
const GROUPS_STABLE_FOR: Duration = Duration::from_millis(50);

/// Waits until every member of every group is stable and each group's
/// members own all its partitions between them, so the run does not
/// measure the initial rebalance.
fn wait_for_stable_groups(plan: &Plan, shared: &Shared) -> anyhow::Result<()> {
    if plan.groups.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut stable_since = None;
    loop {
        if shared.is_aborted() {
            // The executors' errors say why; the run goes on to report them.
            return Ok(());
        }
        let unsettled: Vec<&str> = plan
            .groups
            .iter()
            .zip(&shared.groups)
            .filter(|(_, state)| state.owned_when_stable() != Some(plan.partitions as usize))
            .map(|(group, _)| group.name.as_str())
            .collect();
        if unsettled.is_empty() {
            let since = *stable_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= GROUPS_STABLE_FOR {
                return Ok(());
            }
        } else {
            stable_since = None;
            if started.elapsed() > GROUPS_SETTLE_TIMEOUT {
                shared.abort();
                bail!("consumer groups not stable after {GROUPS_SETTLE_TIMEOUT:?}: {}", unsettled.join(", "));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lets every executor start and exit when dropped.
struct Release(Arc<Shared>, Clock);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.0.start_ns.compare_exchange(0, self.1.now_ns().max(1), Ordering::SeqCst, Ordering::SeqCst);
        self.0.released.store(true, Ordering::SeqCst);
    }
}

fn progress_bar(show: bool, planned_events: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(planned_events);
    let style = ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {msg}")
        .expect("a valid progress template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn update_progress(bar: &ProgressBar, shared: &Shared, acks: AckLevel, elapsed_ns: u64) {
    let sent = shared.sent.load(Ordering::Relaxed);
    let acked = shared.acked.load(Ordering::Relaxed);
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let (position, what) = if acks == AckLevel::None { (sent, "sent") } else { (acked, "acked") };
    bar.set_position(position);
    let rate = position as f64 / (elapsed_ns as f64 / NS_PER_S).max(1e-3);
    bar.set_message(format!("{what} ({rate:.0}/s), consumed {consumed}, lag {}", position.saturating_sub(consumed)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(scenario: Scenario) -> Settings {
        Settings {
            scenario,
            protocol: Protocol::Native,
            events: 20_000,
            event_bytes: 100,
            partitions: 4,
            producers: 2,
            consumers: 4,
            groups: 2,
            stages: 2,
            acks: AckLevel::Durable,
            batch_bytes: 64 << 10,
            linger_ms: 1.0,
            max_in_flight: 16,
            compression: Compression::None,
            idempotent: true,
            topic_configs: Vec::new(),
            tls_ca: None,
            rate: 10_000,
            duration_s: 1.0,
            valley_rate: 1_000,
            peak_s: 0.5,
            valley_s: 0.5,
            consumer_rate: None,
            topic_prefix: "loadgen-test".into(),
            loadgen_cpus: default_loadgen_cpus(&ringbroker::config::allowed_cpus().unwrap()),
            drain_timeout_s: 30.0,
            io_memory_bytes: 64 << 10,
            spin: Duration::ZERO,
        }
    }

    #[test]
    fn plans_split_events_rates_and_partitions() {
        let mut steady = settings(Scenario::Steady);
        steady.producers = 3;
        steady.consumers = 3;
        steady.loadgen_cpus = vec![0, 1];
        let plan = build_plan(&steady, "127.0.0.1:1".parse().unwrap(), None, "t".into());
        assert_eq!(plan.planned().iter().sum::<u64>(), 10_000);
        let executors: Vec<usize> = plan.producers.iter().map(|producer| producer.executor).collect();
        assert_eq!(executors, [0, 1, 0]);
        let partitions: Vec<Vec<u32>> = plan.consumers.iter().map(|consumer| consumer.partitions.clone()).collect();
        assert_eq!(partitions, [vec![0, 3], vec![1], vec![2]]);
        // Producers interleave: the first events of the three are 1/10000 s apart.
        let firsts: Vec<u64> = plan.producers.iter().map(|p| p.schedule.as_ref().unwrap().intended_ns(0)).collect();
        assert_eq!(firsts, [0, 100_000, 200_000]);

        let mut burst = settings(Scenario::Burst);
        burst.events = 10;
        burst.producers = 4;
        let plan = build_plan(&burst, "127.0.0.1:1".parse().unwrap(), None, "t".into());
        assert_eq!(plan.planned(), [3, 3, 2, 2]);
        assert!(plan.producers.iter().all(|producer| producer.schedule.is_none()));

        let peaks = settings(Scenario::Peaks);
        let plan = build_plan(&peaks, "127.0.0.1:1".parse().unwrap(), None, "t".into());
        // 0.5 s at 10,000/s, then 0.5 s at 1,000/s.
        assert_eq!(plan.planned().iter().sum::<u64>(), 5_500);
    }

    #[test]
    fn group_plans_name_topics_and_spread_members() {
        let mut fanout = settings(Scenario::Fanout);
        fanout.groups = 3;
        fanout.consumers = 1;
        fanout.loadgen_cpus = vec![0, 1];
        let plan = build_plan(&fanout, "127.0.0.1:1".parse().unwrap(), None, "t".into());
        assert_eq!((plan.topic.as_str(), plan.topics.clone()), ("t", vec!["t".to_string()]));
        assert!(plan.consumers.is_empty(), "groups replace partition consumers");
        let names: Vec<&str> = plan.groups.iter().map(|group| group.name.as_str()).collect();
        assert_eq!(names, ["t-group-0", "t-group-1", "t-group-2"]);
        let executors: Vec<Vec<usize>> = plan.groups.iter().map(|group| group.members.clone()).collect();
        assert_eq!(executors, [vec![0], vec![1], vec![0]]);
        assert!(plan.groups.iter().all(|group| group.role == GroupRole::Fanout && group.upstream.is_none()));

        let mut pipeline = settings(Scenario::Pipeline);
        pipeline.stages = 3;
        pipeline.consumers = 2;
        let plan = build_plan(&pipeline, "127.0.0.1:1".parse().unwrap(), None, "p".into());
        assert_eq!(plan.topics, ["p-stage-0", "p-stage-1", "p-stage-2"]);
        assert_eq!(plan.topic, "p-stage-0");
        let roles: Vec<GroupRole> = plan.groups.iter().map(|group| group.role.clone()).collect();
        assert_eq!(
            roles,
            [GroupRole::Relay("p-stage-1".into()), GroupRole::Relay("p-stage-2".into()), GroupRole::Last]
        );
        let upstream: Vec<Option<usize>> = plan.groups.iter().map(|group| group.upstream).collect();
        assert_eq!(upstream, [None, Some(0), Some(1)]);
        assert!(plan.groups.iter().all(|group| group.members.len() == 2));

        // More members than partitions is fine in a group (some idle);
        // a pipeline needs acks to commit after.
        pipeline.consumers = 9;
        assert!(validate(&pipeline).is_ok());
        pipeline.acks = AckLevel::None;
        assert!(validate(&pipeline).is_err());
        fanout.groups = 0;
        assert!(validate(&fanout).is_err());
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let mut small = settings(Scenario::Burst);
        small.event_bytes = 10;
        assert!(validate(&small).is_err());
        let mut greedy = settings(Scenario::Burst);
        greedy.consumers = 5;
        assert!(validate(&greedy).is_err());
        let mut still = settings(Scenario::Steady);
        still.rate = 0;
        assert!(validate(&still).is_err());
        assert!(validate(&settings(Scenario::Peaks)).is_ok());
    }

    /// A small broker on the first allowed CPU, as the dev-2core profile
    /// would place it, with test-sized memory and segments.
    fn embedded_target() -> Target {
        let allowed = ringbroker::config::allowed_cpus().unwrap();
        let mut config = TuningConfig::default();
        config.shards.cpus = CpuSelection::List(vec![allowed[0]]);
        config.shards.io_memory_bytes = 64 << 10;
        config.storage.segment_bytes = 16 << 20;
        let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let data_parent = if target_dir.is_dir() { target_dir } else { std::env::temp_dir() };
        Target::Embedded { config: Box::new(config), source: "test".into(), data_parent }
    }

    fn assert_complete(outcome: &Outcome, events: u64) {
        let report = crate::report::Report::build(outcome);
        let totals = &report.totals;
        assert_eq!(report.errors, Vec::<String>::new());
        assert_eq!((totals.produced, totals.acknowledged, totals.consumed), (events, events, events));
        assert_eq!((totals.missing, totals.duplicated, totals.foreign, totals.failed), (0, 0, 0, 0));
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.latency["ack"].count, events);
        assert_eq!(report.latency["e2e"].count, events);
        assert_ack_parts_add_up(outcome, events);
        assert!(report.throughput.drain_after_last_ack_s.is_some());
        assert!(crate::svg::render(outcome, &report).starts_with("<svg"));
    }

    /// Every acknowledged event's ack time is split into four parts that add
    /// up to it: the mean of the sum is the sum of the means, up to the
    /// histograms' precision (3 significant digits) and the microsecond each
    /// part is truncated to.
    fn assert_ack_parts_add_up(outcome: &Outcome, events: u64) {
        let measured = &outcome.measurements;
        let parts = [&measured.ack_to_seal, &measured.ack_dispatch, &measured.ack_round_trip, &measured.ack_delivery];
        assert!(parts.iter().all(|part| part.len() == events), "every event's ack is split");
        let sum: f64 = parts.iter().map(|part| part.mean()).sum();
        let ack = measured.ack.mean();
        assert!((sum - ack).abs() <= ack * 0.005 + 4.0, "parts {sum:.1} us, ack {ack:.1} us");
    }

    #[test]
    fn a_short_burst_against_an_embedded_broker_loses_nothing() {
        let settings = settings(Scenario::Burst);
        let outcome = run(&settings, embedded_target(), false).unwrap();
        assert_complete(&outcome, 20_000);
        assert_eq!(outcome.measurements.send_delay.len(), 0, "burst has no schedule");
    }

    #[test]
    fn a_short_steady_run_sends_on_schedule_and_loses_nothing() {
        let mut settings = settings(Scenario::Steady);
        settings.rate = 8_000;
        settings.duration_s = 0.5;
        settings.acks = AckLevel::Written;
        let outcome = run(&settings, embedded_target(), false).unwrap();
        assert_complete(&outcome, 4_000);
        assert_eq!(outcome.measurements.send_delay.len(), 4_000);
    }

    #[test]
    fn a_short_fanout_delivers_every_event_to_every_group() {
        fanout_delivers_every_event_to_every_group(Protocol::Native);
    }

    #[test]
    fn a_short_fanout_through_the_kafka_api_delivers_every_event_to_every_group() {
        fanout_delivers_every_event_to_every_group(Protocol::Kafka);
    }

    fn fanout_delivers_every_event_to_every_group(protocol: Protocol) {
        let mut settings = settings(Scenario::Fanout);
        settings.protocol = protocol;
        settings.events = 5_000;
        settings.producers = 1;
        // Two members per group: the start waits for both to settle, and
        // the end for both groups' partitions, whoever owns them.
        settings.consumers = 2;
        let outcome = run(&settings, embedded_target(), false).unwrap();
        let report = crate::report::Report::build(&outcome);
        let totals = &report.totals;
        assert_eq!(report.errors, Vec::<String>::new());
        assert_eq!((totals.produced, totals.acknowledged), (5_000, 5_000));
        assert_eq!(report.groups.len(), 2);
        for group in &report.groups {
            assert_eq!((group.consumed, group.missing, group.duplicated, group.foreign), (5_000, 0, 0, 0), "{group:?}");
            assert_eq!((group.rebalances, group.members_not_caught_up), (0, 0), "{group:?}");
            assert_eq!(group.e2e.as_ref().map(|e2e| e2e.count), Some(5_000));
            assert!(group.caught_up_s.is_some());
        }
        // Totals count deliveries: every event once per group.
        assert_eq!((totals.consumed, totals.missing, totals.duplicated), (10_000, 0, 0));
        assert_eq!(report.latency["e2e"].count, 10_000);
        assert_eq!(report.exit_code(), 0);
        let svg = crate::svg::render(&outcome, &report);
        assert!(svg.contains("end-to-end, group 1"));
    }

    #[test]
    fn a_short_pipeline_carries_every_event_through_every_stage() {
        pipeline_carries_every_event_through_every_stage(Protocol::Native);
    }

    #[test]
    fn a_short_pipeline_through_the_kafka_api_carries_every_event_through_every_stage() {
        pipeline_carries_every_event_through_every_stage(Protocol::Kafka);
    }

    fn pipeline_carries_every_event_through_every_stage(protocol: Protocol) {
        let mut settings = settings(Scenario::Pipeline);
        settings.protocol = protocol;
        settings.events = 2_000;
        settings.producers = 1;
        settings.consumers = 1;
        let outcome = run(&settings, embedded_target(), false).unwrap();
        let report = crate::report::Report::build(&outcome);
        assert_eq!(report.errors, Vec::<String>::new());
        assert_eq!((report.totals.produced, report.totals.acknowledged), (2_000, 2_000));
        let [first, last] = &report.groups[..] else { panic!("two stages: {:?}", report.groups) };
        assert_eq!((first.role, last.role), ("relay", "last"));
        for stage in [first, last] {
            assert_eq!((stage.consumed, stage.missing, stage.foreign), (2_000, 0, 0), "{stage:?}");
            if stage.duplicated > 0 {
                // At least once: only a rebalance may explain a duplicate.
                eprintln!("{}: {} duplicates after {} rebalances", stage.label, stage.duplicated, stage.rebalances);
                assert!(stage.rebalanced, "{stage:?}");
            }
        }
        assert_eq!(first.forwarded, Some(2_000 + first.duplicated));
        assert_eq!(report.totals.missing, 0);
        assert_eq!(report.totals.consumed, 2_000);
        // The chain's latency is measured from the original send time.
        let chain = &report.latency["e2e"];
        assert_eq!(chain.count, 2_000 + last.duplicated);
        assert!(chain.p50_us >= first.e2e.as_ref().unwrap().p50_us);
        assert_eq!(report.exit_code(), 0);
    }

    #[test]
    fn a_short_burst_through_the_kafka_api_loses_nothing() {
        let mut settings = settings(Scenario::Burst);
        settings.protocol = Protocol::Kafka;
        let outcome = run(&settings, embedded_target(), false).unwrap();
        assert_complete(&outcome, 20_000);
        assert!(outcome.environment.broker.kafka.is_some());
        // The broker counted the requests it got through its Kafka port.
        let counters = &outcome.broker_stats.as_ref().expect("the broker's counters").counters;
        assert!(counters["produce_requests"] > 0 && counters["fetch_requests"] > 0, "{counters:?}");
    }

    #[test]
    fn a_short_steady_run_through_the_kafka_api_with_acks_none_loses_nothing_acknowledged() {
        let mut settings = settings(Scenario::Steady);
        settings.protocol = Protocol::Kafka;
        settings.rate = 8_000;
        settings.duration_s = 0.5;
        settings.acks = AckLevel::None;
        let outcome = run(&settings, embedded_target(), false).unwrap();
        let report = crate::report::Report::build(&outcome);
        assert_eq!(report.errors, Vec::<String>::new());
        // Nothing is acknowledged with acks 0, yet every event arrives once.
        assert_eq!((report.totals.produced, report.totals.consumed), (4_000, 4_000));
        assert_eq!((report.totals.missing, report.totals.duplicated), (0, 0));
    }

    /// Two shards on the first two allowed CPUs; per-shard mode sends
    /// every request to the owning shard, node mode sends all to one.
    #[test]
    fn per_shard_kafka_forwards_nothing_and_node_mode_forwards() {
        let allowed = ringbroker::config::allowed_cpus().unwrap();
        let [first, second, ..] = allowed[..] else {
            eprintln!("skipped: two shards need two CPUs, this process may use {allowed:?}");
            return;
        };
        let mut settings = settings(Scenario::Burst);
        settings.protocol = Protocol::Kafka;
        for (mode, forwards) in [(KafkaMode::PerShard, false), (KafkaMode::Node, true)] {
            let Target::Embedded { mut config, source, data_parent } = embedded_target() else { unreachable!() };
            config.shards.cpus = CpuSelection::List(vec![first, second]);
            config.kafka.mode = mode;
            let outcome = run(&settings, Target::Embedded { config, source, data_parent }, false).unwrap();
            assert_complete(&outcome, 20_000);
            let counters = &outcome.broker_stats.as_ref().expect("the broker's counters").counters;
            assert_eq!(counters["forwarded_out"] > 0, forwards, "{mode:?}: {counters:?}");
        }
    }

    /// Four loadgen executors (two per CPU on a 2-CPU box), members of each
    /// group spread over them. Executors start at once, so one executor's
    /// producers may run while another still settles its members; and at
    /// the end members leave one after another. Both once failed runs.
    #[test]
    fn fanout_and_pipeline_with_four_executors_lose_nothing() {
        let allowed = ringbroker::config::allowed_cpus().unwrap();
        let four: Vec<usize> = allowed.iter().copied().cycle().take(4).collect();
        for protocol in [Protocol::Native, Protocol::Kafka] {
            let mut fanout = settings(Scenario::Fanout);
            fanout.protocol = protocol;
            fanout.loadgen_cpus = four.clone();
            fanout.events = 20_000;
            fanout.partitions = 8;
            fanout.consumers = 4;
            let outcome = run(&fanout, embedded_target(), false).unwrap();
            let report = crate::report::Report::build(&outcome);
            assert_eq!(report.errors, Vec::<String>::new(), "{protocol:?}");
            for group in &report.groups {
                assert_eq!(
                    (group.consumed, group.missing, group.duplicated),
                    (20_000, 0, 0),
                    "{protocol:?}: {group:?}"
                );
            }
            assert_eq!(report.exit_code(), 0);

            let mut pipeline = settings(Scenario::Pipeline);
            pipeline.protocol = protocol;
            pipeline.loadgen_cpus = four.clone();
            pipeline.events = 10_000;
            pipeline.partitions = 4;
            pipeline.consumers = 2;
            let outcome = run(&pipeline, embedded_target(), false).unwrap();
            let report = crate::report::Report::build(&outcome);
            assert_eq!(report.errors, Vec::<String>::new(), "{protocol:?}");
            for stage in &report.groups {
                assert_eq!(
                    (stage.consumed, stage.missing, stage.duplicated),
                    (10_000, 0, 0),
                    "{protocol:?}: {stage:?}"
                );
            }
            assert_eq!(report.exit_code(), 0);
        }
    }

    #[test]
    fn loadgen_defaults_to_the_second_allowed_cpu() {
        assert_eq!(default_loadgen_cpus(&[0, 1, 2]), [1]);
        assert_eq!(default_loadgen_cpus(&[3]), [3]);
        assert_eq!(default_loadgen_cpus(&[]), [0]);
    }
}
