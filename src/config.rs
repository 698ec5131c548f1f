//! The broker's tuning configuration: what `ringbroker serve --tuning <file>`
//! reads (the shipped profiles live in `tuning/*.toml`).
//!
//! It controls four things:
//! - `[shards]`: which CPUs run a shard (one pinned glommio executor each) and
//!   the executor settings (io_memory, ring depth, preempt timer, spinning,
//!   task-queue shares for network versus flushing);
//! - `[network]`: the listen addresses and the per-connection / per-shard
//!   limits and timeouts;
//! - `[storage]`: the data directory and every partition log setting (turned
//!   into a [`LogConfig`] by [`TuningConfig::log_config`]);
//! - `[topics]`: defaults for topics created without explicit settings.
//!
//! Every key is optional and has a built-in default (the values of
//! `tuning/default.toml`), so `ringbroker serve` works with no file at all.
//! Unknown keys are rejected by name, so a typo cannot silently fall back to
//! a default. Keys are snake_case and carry their unit (`_bytes`, `_ms`, `_us`).
//!
//! Loading parses, then [`TuningConfig::validate`]s ranges and cross-field
//! rules. Which CPUs exist is only known at run time, so the CPU selection is
//! checked against the process's affinity by [`TuningConfig::resolve_cpus`].

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::storage::io::SyncMethod;
use crate::storage::{FlushPolicy, LogConfig, StorageError};

/// Highest CPU count Linux can be built for (CONFIG_NR_CPUS); bounds parsing
/// so a malformed range cannot make us allocate without limit.
const CPU_LIMIT: usize = 8192;

/// Most shards `shards.count` may place on one CPU.
pub const SHARDS_PER_CPU_MAX: usize = 8;

/// Below this glommio's buffer pool is too small to be useful (tests use it).
const IO_MEMORY_MIN: usize = 64 << 10;

/// Room a frame needs beyond its record batch for the request header.
const FRAME_HEADROOM_BYTES: usize = 64 << 10;

/// glommio clamps static shares into this range; reject values it would change.
const SHARES_RANGE: std::ops::RangeInclusive<usize> = 1..=1000;

const RING_DEPTH_RANGE: std::ops::RangeInclusive<usize> = 8..=32768;

/// Why a tuning configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The tuning file could not be read.
    #[error("cannot read tuning file {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },

    /// The text is not valid TOML, or a key or value is not accepted.
    #[error("cannot parse tuning: {0}")]
    Parse(String),

    /// A value is out of range or inconsistent with another.
    #[error("invalid tuning: {0}")]
    Invalid(String),

    /// An error found in a particular file.
    #[error("{}: {error}", path.display())]
    InFile { path: PathBuf, error: Box<ConfigError> },

    /// A configured CPU is outside the process's affinity mask.
    #[error("cpu {cpu} is not available to this process (allowed: {allowed})")]
    CpuNotAllowed { cpu: usize, allowed: String },

    /// The CPU selection resolved to nothing.
    #[error("no CPUs selected for shards")]
    NoCpus,

    /// The process's CPU affinity could not be determined.
    #[error("cannot read this process's CPU affinity: {0}")]
    Affinity(String),

    /// A Linux CPU list (`0-3,5`) that does not parse.
    #[error("malformed CPU list {input:?}: {reason}")]
    CpuList { input: String, reason: CpuListError },
}

/// What is wrong with a Linux CPU list (`0-3,5`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("empty")]
    Empty,
    #[error("{0:?} is not a CPU number")]
    NotACpu(String),
    #[error("cpu {0} is beyond the Linux limit of {CPU_LIMIT} CPUs")]
    BeyondLimit(usize),
    #[error("range {0:?} runs backwards")]
    Backwards(String),
}

/// The whole tuning file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuningConfig {
    pub shards: ShardsConfig,
    pub network: NetworkConfig,
    pub storage: StorageConfig,
    pub topics: TopicsConfig,
    pub metrics: MetricsConfig,
    pub kafka: KafkaConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
}

/// SASL authentication on the native and Kafka listeners (off by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The native listeners require a SASL login as the first request.
    pub native: bool,
    /// The Kafka listeners require SaslHandshake and SaslAuthenticate first.
    pub kafka: bool,
    /// Principals (user names) allowed everything, including managing users.
    pub superusers: Vec<String>,
    /// How long a failed login waits before it is answered (and the
    /// connection closed), whatever made it fail.
    pub failure_delay_ms: u64,
    /// Connections one principal may hold open on one shard (superusers
    /// excepted), so one tenant cannot take every connection slot. 0: no
    /// limit.
    pub max_connections_per_principal: u32,
    /// Produce bytes per second one principal may send to one shard (a
    /// second's worth may come at once); beyond it, answers are held back
    /// (Kafka: with throttle_time_ms). 0: no quota.
    pub produce_bytes_per_second: u64,
    /// The same for fetched bytes.
    pub fetch_bytes_per_second: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            native: false,
            kafka: false,
            superusers: Vec::new(),
            failure_delay_ms: 500,
            max_connections_per_principal: 1000,
            produce_bytes_per_second: 0,
            fetch_bytes_per_second: 0,
        }
    }
}

impl AuthConfig {
    /// Whether any listener requires a login.
    pub fn enabled(&self) -> bool {
        self.native || self.kafka
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.failure_delay_ms > 60_000 {
            return invalid("auth.failure_delay_ms must be at most 60000");
        }
        for user in &self.superusers {
            if let Err(error) = crate::protocol::scram::validate_user_name(user) {
                return invalid(format!("auth.superusers: {error}"));
            }
        }
        Ok(())
    }
}

/// TLS on the native and Kafka listeners: off unless a certificate and its
/// key are given.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the broker's own certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// TLS on the native listeners (shared and per-shard ports).
    pub native: bool,
    /// TLS on the Kafka listeners (bootstrap and per-shard ports).
    pub kafka: bool,
    /// HTTPS on the metrics listener (off by default: Prometheus then needs
    /// `scheme: https` and the CA).
    pub metrics: bool,
    /// PEM certificates of the CA that signs client certificates (mutual
    /// TLS). A verified client certificate names the client's principal.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: whether clients must present a certificate.
    pub client_auth: ClientAuth,
}

/// Whether TLS clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Not asked for.
    #[default]
    None,
    /// Checked when presented; a client without one logs in with SASL (or
    /// is anonymous where no login is required).
    Optional,
    /// Every client presents one, or the handshake fails.
    Required,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            native: true,
            kafka: true,
            metrics: false,
            client_ca_file: None,
            client_auth: ClientAuth::None,
        }
    }
}

impl TlsConfig {
    /// The certificate and key files, when TLS is configured.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return invalid("tls.cert_file and tls.key_file go together: give both or neither");
        }
        if self.client_auth != ClientAuth::None && self.client_ca_file.is_none() {
            return invalid("tls.client_auth needs tls.client_ca_file, the CA client certificates are checked against");
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            return invalid("tls.client_ca_file needs tls.cert_file and tls.key_file");
        }
        Ok(())
    }
}

/// The Kafka API front door.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub enabled: bool,
    /// The bootstrap address every shard accepts on (SO_REUSEPORT). In
    /// `per-shard` mode it is never advertised; in `node` mode it is the one
    /// advertised broker. Unset: [`KAFKA_LISTEN_DEFAULT`] if free (with the
    /// default shard ports), else ports the OS picks, with a warning; set, a
    /// port in use stops the broker from starting.
    pub listen: Option<SocketAddr>,
    /// `per-shard` mode: shard i also listens on this port + i and is
    /// advertised as Kafka broker i. 0: ports the OS picks. Unset:
    /// [`KAFKA_SHARD_PORT_BASE_DEFAULT`], as `listen`.
    pub shard_port_base: Option<u16>,
    /// The host advertised in Metadata and FindCoordinator answers. An IPv4
    /// address by default: librdkafka resolves `localhost` to ::1 first.
    pub advertised_host: String,
    pub mode: KafkaMode,
    /// Create a topic that a Metadata or Produce request names and that does
    /// not exist (with `topics.default_partitions`), as Kafka's
    /// `auto.create.topics.enable` does.
    pub auto_create_topics: bool,
}

/// How shards are advertised to Kafka clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaMode {
    /// Every shard is a broker of its own, on its own port, and leads its
    /// partitions: clients send each request straight to the owning core.
    PerShard,
    /// One broker on one port; shards forward over the mesh.
    Node,
}

/// The Kafka API's bootstrap address unless configured: the port every
/// Kafka tool assumes.
pub const KAFKA_LISTEN_DEFAULT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9092);
/// Per-shard Kafka ports start here unless configured.
pub const KAFKA_SHARD_PORT_BASE_DEFAULT: u16 = 9200;

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            enabled: true,
            listen: None,
            shard_port_base: None,
            advertised_host: "127.0.0.1".to_string(),
            mode: KafkaMode::PerShard,
            auto_create_topics: true,
        }
    }
}

/// The Prometheus `/metrics` endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `false` turns the endpoint off.
    pub enabled: bool,
    /// Where shard 0 serves `/metrics` over HTTP; port 0 picks one. Unset:
    /// [`METRICS_LISTEN_DEFAULT`] if it is free, else a port the OS picks
    /// (with a warning); set, a port in use stops the broker from starting.
    pub listen: Option<SocketAddr>,
}

/// Where `/metrics` is served unless configured otherwise.
pub const METRICS_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9644);

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, listen: None }
    }
}

/// Which CPUs run shards, and how each shard's executor is built.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsConfig {
    /// CPUs to run shards on (one each unless `count` says otherwise),
    /// intersected with the process affinity.
    pub cpus: CpuSelection,
    /// How many shards: 0 for one per CPU of `cpus`. Fewer take the first
    /// CPUs; more are placed on the CPUs in turn, so that some share a CPU
    /// (at most [`SHARDS_PER_CPU_MAX`] each). Sharing is for exercising and
    /// measuring several shards on a small machine, not for production.
    pub count: usize,
    /// glommio `io_memory` per executor, registered in each of its rings.
    pub io_memory_bytes: usize,
    /// Entries of each io_uring ring: how much I/O one shard can have queued.
    pub ring_depth: usize,
    /// How often a long-running task queue is asked to yield. Keep it in
    /// milliseconds: glommio 0.9.0 can park an executor that has runnable
    /// work if this timer fires while the thread is descheduled (more likely
    /// the shorter it is), and never wake it.
    pub preempt_timer_us: u64,
    /// Busy-poll this long before sleeping when idle (0: sleep at once).
    pub spin_before_park_us: u64,
    /// An idle shard wakes at least this often (0: never). glommio 0.9.0
    /// can miss a wake-up sent from another thread just as an executor goes
    /// to sleep; this bounds how late such a message (a forwarded request,
    /// its reply) is noticed, at the cost of this many wake-ups per second.
    pub wake_interval_us: u64,
    /// Task-queue shares for network work (accept, read, dispatch, reply).
    pub network_shares: usize,
    /// Task-queue shares for flushing and background work (retention).
    pub flush_shares: usize,
}

/// The CPUs shards run on: every allowed one, or an explicit list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuSelection {
    All,
    List(Vec<usize>),
}

/// Listeners, connection limits and timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Shared address every shard accepts on (SO_REUSEPORT spreads connections).
    pub listen: SocketAddr,
    /// Shard i also listens on this port + i (same IP as `listen`); 0: none.
    pub shard_port_base: u16,
    /// Largest frame (header plus record batch) a connection may send.
    pub max_frame_bytes: usize,
    pub max_connections_per_shard: usize,
    /// Connections one client address may have open to one shard.
    pub max_connections_per_ip: usize,
    /// A full shard closes its longest-idle connection (idle at least this
    /// long) to admit a new one, before it refuses anyone.
    pub evict_idle_after_ms: u64,
    /// Request bytes one connection may have in flight before reads pause.
    pub inflight_bytes_per_connection: usize,
    /// Request bytes all of a shard's connections may have in flight.
    pub inflight_bytes_per_shard: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// A frame that has started arriving must be complete within this.
    pub frame_timeout_ms: u64,
    /// A request must be answered within this.
    pub request_timeout_ms: u64,
}

/// Where the data lives and how partition logs behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub segment_bytes: u64,
    /// 0: never roll a segment by age.
    pub segment_age_ms: u64,
    pub index_interval_bytes: u32,
    pub flush_policy: FlushPolicyName,
    /// Only used by the `interval` flush policy.
    pub flush_interval_ms: u64,
    /// How the `every-batch` policy makes each write durable.
    pub sync_method: SyncMethodName,
    pub write_bytes_max: usize,
    pub write_request_bytes: usize,
    pub batch_bytes_max: usize,
    pub tail_cache_bytes: usize,
    /// 0: unlimited.
    pub retention_bytes: u64,
    /// 0: unlimited.
    pub retention_ms: u64,
    pub retention_check_interval_ms: u64,
    pub preallocate: bool,
    /// Free disk space a topic creation must leave: a creation whose new
    /// partitions would not fit the free space less this is refused.
    pub free_bytes_reserved: u64,
    /// Idempotent producers remembered per partition.
    pub producers_per_partition_max: usize,
    /// An idempotent producer unheard of for this long is forgotten.
    pub producer_expiry_ms: u64,
}

/// The flush policy as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushPolicyName {
    EveryBatch,
    Interval,
}

/// The sync method as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMethodName {
    /// Segment files opened with O_DSYNC: each write completes durable.
    Dsync,
    /// A write, then an fdatasync.
    Fdatasync,
}

/// Defaults for new topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Partitions of a topic created without a count; 0: one per shard.
    pub default_partitions: u32,
    /// Most partitions the broker holds, over all topics.
    pub partitions_max: usize,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig { default_partitions: 0, partitions_max: 10_000 }
    }
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            cpus: CpuSelection::All,
            count: 0,
            io_memory_bytes: 10 << 20,
            ring_depth: 128,
            preempt_timer_us: 10_000,
            spin_before_park_us: 0,
            wake_interval_us: 1000,
            network_shares: 1000,
            flush_shares: 250,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            shard_port_base: 9100,
            max_frame_bytes: 16 << 20,
            max_connections_per_shard: 4096,
            max_connections_per_ip: 1024,
            evict_idle_after_ms: 30_000,
            inflight_bytes_per_connection: 8 << 20,
            inflight_bytes_per_shard: 256 << 20,
            idle_timeout_ms: 600_000,
            frame_timeout_ms: 30_000,
            request_timeout_ms: 30_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
        StorageConfig {
            data_dir: PathBuf::from("./ringbroker-data"),
            segment_bytes: 256 << 20,
            segment_age_ms: WEEK_MS,
            index_interval_bytes: 4096,
            flush_policy: FlushPolicyName::EveryBatch,
            flush_interval_ms: 5,
            sync_method: SyncMethodName::Fdatasync,
            write_bytes_max: 4 << 20,
            write_request_bytes: 1 << 20,
            batch_bytes_max: 1 << 20,
            tail_cache_bytes: 8 << 20,
            retention_bytes: 0,
            retention_ms: WEEK_MS,
            retention_check_interval_ms: 60_000,
            preallocate: true,
            free_bytes_reserved: 64 << 20,
            producers_per_partition_max: 1024,
            producer_expiry_ms: 24 * 3600 * 1000,
        }
    }
}

impl<'de> Deserialize<'de> for CpuSelection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CpuSelectionVisitor)
    }
}

/// Accepts the string "all" or a list of CPU numbers, and nothing else.
struct CpuSelectionVisitor;

impl<'de> Visitor<'de> for CpuSelectionVisitor {
    type Value = CpuSelection;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"all\" or a list of CPU numbers")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<CpuSelection, E> {
        match value {
            "all" => Ok(CpuSelection::All),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuSelection, A::Error> {
        let mut cpus = Vec::new();
        while let Some(cpu) = seq.next_element::<usize>()? {
            cpus.push(cpu);
        }
        Ok(CpuSelection::List(cpus))
    }
}

impl TuningConfig {
    /// Parses and validates a tuning file's text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: TuningConfig = toml::from_str(text).map_err(|error| parse_error(text, &error))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a tuning file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Self::from_toml_str(&text)
            .map_err(|error| ConfigError::InFile { path: path.to_owned(), error: Box::new(error) })
    }

    /// Checks ranges and cross-field rules (not the CPUs: see `resolve_cpus`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.shards.validate()?;
        self.network.validate()?;
        self.storage.validate()?;
        self.topics.validate()?;
        self.tls.validate()?;
        self.auth.validate()?;
        // The largest batch must fit a frame along with its request header.
        let frame_needed = self.storage.batch_bytes_max.saturating_add(FRAME_HEADROOM_BYTES);
        if self.network.max_frame_bytes <= frame_needed {
            return invalid(format!(
                "network.max_frame_bytes {} must exceed storage.batch_bytes_max {} + {FRAME_HEADROOM_BYTES} bytes of headroom",
                self.network.max_frame_bytes, self.storage.batch_bytes_max
            ));
        }
        Ok(())
    }

    /// The settings every partition log is opened with.
    pub fn log_config(&self) -> LogConfig {
        self.storage.log_config()
    }

    /// The CPUs shards run on: shard i runs on element i. Without
    /// `shards.count`, the configured CPUs in order without duplicates.
    /// Checked against this process's affinity mask, because glommio's own
    /// CPU list ignores taskset and cgroup cpusets.
    pub fn resolve_cpus(&self) -> Result<Vec<usize>, ConfigError> {
        self.resolve_cpus_within(&allowed_cpus()?)
    }

    /// `resolve_cpus` against a given set of allowed CPUs.
    fn resolve_cpus_within(&self, allowed: &[usize]) -> Result<Vec<usize>, ConfigError> {
        let cpus = match &self.shards.cpus {
            CpuSelection::All => allowed.to_vec(),
            CpuSelection::List(list) => select_cpus(list, allowed)?,
        };
        if cpus.is_empty() {
            return Err(ConfigError::NoCpus);
        }
        let cpus = match self.shards.count {
            0 => cpus,
            count if count > cpus.len() * SHARDS_PER_CPU_MAX => {
                return invalid(format!(
                    "shards.count {count} would put more than {SHARDS_PER_CPU_MAX} shards on each of {} CPUs ({})",
                    cpus.len(),
                    format_cpu_list(&cpus)
                ));
            }
            count => (0..count).map(|shard| cpus[shard % cpus.len()]).collect(),
        };
        self.network.check_shard_ports(cpus.len())?;
        self.check_metrics_port(cpus.len())?;
        Ok(cpus)
    }

    /// The metrics port must not be one the native listeners take.
    fn check_metrics_port(&self, shards: usize) -> Result<(), ConfigError> {
        let port = self.metrics.listen.unwrap_or(METRICS_LISTEN_DEFAULT).port();
        if !self.metrics.enabled || port == 0 {
            return Ok(());
        }
        let shard_ports = (0..shards).filter_map(|shard| self.network.shard_port(shard));
        if port == self.network.listen.port() || shard_ports.into_iter().any(|shard_port| shard_port == port) {
            return invalid(format!("metrics.listen port {port} collides with a native listener's port"));
        }
        Ok(())
    }
}

impl ShardsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let CpuSelection::List(cpus) = &self.cpus {
            if cpus.is_empty() {
                return invalid("shards.cpus is an empty list (use \"all\" for every allowed CPU)");
            }
            if let Some(cpu) = cpus.iter().find(|&&cpu| cpu >= CPU_LIMIT) {
                return invalid(format!("shards.cpus: cpu {cpu} is beyond the Linux limit of {CPU_LIMIT} CPUs"));
            }
        }
        if self.io_memory_bytes < IO_MEMORY_MIN {
            return invalid(format!("shards.io_memory_bytes {} is below {IO_MEMORY_MIN}", self.io_memory_bytes));
        }
        if !self.ring_depth.is_power_of_two() || !RING_DEPTH_RANGE.contains(&self.ring_depth) {
            return invalid(format!(
                "shards.ring_depth {} must be a power of two between {} and {}",
                self.ring_depth,
                RING_DEPTH_RANGE.start(),
                RING_DEPTH_RANGE.end()
            ));
        }
        if self.preempt_timer_us == 0 {
            return invalid("shards.preempt_timer_us must be positive");
        }
        check_shares("shards.network_shares", self.network_shares)?;
        check_shares("shards.flush_shares", self.flush_shares)
    }

    /// How often a task queue is asked to yield.
    pub fn preempt_timer(&self) -> Duration {
        Duration::from_micros(self.preempt_timer_us)
    }

    /// How long an idle executor spins before parking; `None`: not at all.
    pub fn spin_before_park(&self) -> Option<Duration> {
        non_zero(self.spin_before_park_us).map(Duration::from_micros)
    }

    pub fn wake_interval(&self) -> Option<Duration> {
        non_zero(self.wake_interval_us).map(Duration::from_micros)
    }
}

impl NetworkConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_connections_per_shard", self.max_connections_per_shard as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("evict_idle_after_ms", self.evict_idle_after_ms),
            ("inflight_bytes_per_connection", self.inflight_bytes_per_connection as u64),
            ("inflight_bytes_per_shard", self.inflight_bytes_per_shard as u64),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return invalid(format!("network.{key} must be positive"));
        }
        // A connection could never use a budget larger than its shard's.
        if self.inflight_bytes_per_connection > self.inflight_bytes_per_shard {
            return invalid(format!(
                "network.inflight_bytes_per_connection {} exceeds inflight_bytes_per_shard {}",
                self.inflight_bytes_per_connection, self.inflight_bytes_per_shard
            ));
        }
        // A frame larger than the whole shard budget could never be admitted.
        if self.max_frame_bytes > self.inflight_bytes_per_shard {
            return invalid(format!(
                "network.max_frame_bytes {} exceeds inflight_bytes_per_shard {}",
                self.max_frame_bytes, self.inflight_bytes_per_shard
            ));
        }
        Ok(())
    }

    /// The per-shard port of shard `shard`, if per-shard ports are enabled.
    pub fn shard_port(&self, shard: usize) -> Option<u16> {
        if self.shard_port_base == 0 {
            return None;
        }
        u16::try_from(usize::from(self.shard_port_base) + shard).ok()
    }

    /// Per-shard ports must all exist and must not take the shared port.
    fn check_shard_ports(&self, shards: usize) -> Result<(), ConfigError> {
        if self.shard_port_base == 0 {
            return Ok(());
        }
        let first = usize::from(self.shard_port_base);
        let last = first + shards - 1;
        if last > usize::from(u16::MAX) {
            return invalid(format!("network.shard_port_base {first} + {shards} shards runs past port {}", u16::MAX));
        }
        let shared = usize::from(self.listen.port());
        if (first..=last).contains(&shared) {
            return invalid(format!("network.listen port {shared} collides with the per-shard ports {first}-{last}"));
        }
        Ok(())
    }
}

impl TopicsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let limit = crate::shard::metadata::PARTITIONS_TOTAL_MAX;
        if self.partitions_max == 0 || self.partitions_max > limit {
            return invalid(format!("topics.partitions_max {} must lie between 1 and {limit}", self.partitions_max));
        }
        let per_topic = crate::shard::metadata::PARTITIONS_PER_TOPIC_MAX;
        if self.default_partitions > per_topic {
            return invalid(format!(
                "topics.default_partitions {} exceeds the {per_topic} partitions a topic may have",
                self.default_partitions
            ));
        }
        Ok(())
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return invalid("storage.data_dir is empty");
        }
        if self.retention_check_interval_ms == 0 {
            return invalid("storage.retention_check_interval_ms must be positive");
        }
        // Checked here under its tuning name; the log calls it segment_bytes_max.
        if self.segment_bytes > u64::from(u32::MAX) || self.segment_bytes < self.batch_bytes_max as u64 {
            return invalid(format!(
                "storage.segment_bytes {} must lie between storage.batch_bytes_max ({}) and 4 GiB",
                self.segment_bytes, self.batch_bytes_max
            ));
        }
        // The log checks its own settings; reuse those rules rather than copy them.
        self.log_config().validate().map_err(|error| match error {
            StorageError::Config(message) => ConfigError::Invalid(format!("storage: {message}")),
            other => ConfigError::Invalid(format!("storage: {other}")),
        })
    }

    /// The settings every partition log is opened with; 0 becomes `None`.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes_max: self.segment_bytes,
            segment_age_max_ms: non_zero(self.segment_age_ms),
            index_interval_bytes: self.index_interval_bytes,
            write_bytes_max: self.write_bytes_max,
            write_request_bytes: self.write_request_bytes,
            batch_bytes_max: self.batch_bytes_max,
            tail_cache_bytes: self.tail_cache_bytes,
            flush: self.flush_policy(),
            sync: match self.sync_method {
                SyncMethodName::Dsync => SyncMethod::Dsync,
                SyncMethodName::Fdatasync => SyncMethod::Fdatasync,
            },
            retention_bytes: non_zero(self.retention_bytes),
            retention_ms: non_zero(self.retention_ms),
            preallocate: self.preallocate,
            producers_max: self.producers_per_partition_max,
            producer_expiry_ms: self.producer_expiry_ms,
        }
    }

    /// The log's flush policy.
    pub fn flush_policy(&self) -> FlushPolicy {
        match self.flush_policy {
            FlushPolicyName::EveryBatch => FlushPolicy::EveryBatch,
            FlushPolicyName::Interval => FlushPolicy::Interval { interval_ms: self.flush_interval_ms },
        }
    }

    /// How often retention looks for segments to delete.
    pub fn retention_check_interval(&self) -> Duration {
        Duration::from_millis(self.retention_check_interval_ms)
    }
}

/// The CPUs this process may run on, from `Cpus_allowed_list` in
/// `/proc/self/status` (reading it needs no unsafe `sched_getaffinity`).
pub fn allowed_cpus() -> Result<Vec<usize>, ConfigError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|error| ConfigError::Affinity(format!("/proc/self/status: {error}")))?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .ok_or_else(|| ConfigError::Affinity("no Cpus_allowed_list in /proc/self/status".into()))?;
    parse_cpu_list(list)
}

/// Parses a Linux CPU list such as `0-3,5,7-8` into sorted, distinct CPUs.
pub fn parse_cpu_list(input: &str) -> Result<Vec<usize>, ConfigError> {
    let malformed = |reason: CpuListError| ConfigError::CpuList { input: input.trim().to_owned(), reason };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(malformed(CpuListError::Empty));
    }
    let mut cpus = Vec::new();
    for item in trimmed.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (parse_cpu(first).map_err(&malformed)?, parse_cpu(last).map_err(&malformed)?),
            None => {
                let cpu = parse_cpu(item).map_err(&malformed)?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(malformed(CpuListError::Backwards(item.to_owned())));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// One CPU number of a CPU list, bounded so ranges stay small.
fn parse_cpu(text: &str) -> Result<usize, CpuListError> {
    let text = text.trim();
    let cpu: usize = text.parse().map_err(|_| CpuListError::NotACpu(text.to_owned()))?;
    if cpu >= CPU_LIMIT {
        return Err(CpuListError::BeyondLimit(cpu));
    }
    Ok(cpu)
}

/// Writes CPUs back in the compact form `0-3,5`, for messages.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut index = 0;
    while index < sorted.len() {
        let first = sorted[index];
        let mut last = first;
        while index + 1 < sorted.len() && sorted[index + 1] == last + 1 {
            index += 1;
            last = sorted[index];
        }
        let separator = if out.is_empty() { "" } else { "," };
        // Writing into a String cannot fail.
        let _ =
            if first == last { write!(out, "{separator}{first}") } else { write!(out, "{separator}{first}-{last}") };
        index += 1;
    }
    out
}

/// The listed CPUs in order, first occurrence kept, all of them allowed.
fn select_cpus(list: &[usize], allowed: &[usize]) -> Result<Vec<usize>, ConfigError> {
    let mut cpus: Vec<usize> = Vec::with_capacity(list.len());
    for &cpu in list {
        if !allowed.contains(&cpu) {
            return Err(ConfigError::CpuNotAllowed { cpu, allowed: format_cpu_list(allowed) });
        }
        if !cpus.contains(&cpu) {
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

/// A one-line parse error: position, then toml's message.
fn parse_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().replace('\n', " ");
    let position = error.span().and_then(|span| text.get(..span.start)).map(|before| {
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |tail| tail.chars().count()) + 1;
        format!("line {line}, column {column}: ")
    });
    ConfigError::Parse(format!("{}{message}", position.unwrap_or_default()))
}

fn check_shares(key: &str, shares: usize) -> Result<(), ConfigError> {
    if !SHARES_RANGE.contains(&shares) {
        return invalid(format!(
            "{key} {shares} must lie between {} and {} (glommio's range)",
            SHARES_RANGE.start(),
            SHARES_RANGE.end()
        ));
    }
    Ok(())
}

fn invalid<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message.into()))
}

/// 0 in the file means "no limit" / "never".
fn non_zero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TuningConfig, ConfigError> {
        TuningConfig::from_toml_str(text)
    }

    fn error_text(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        TuningConfig::default().validate().unwrap();
        TuningConfig::default().log_config().validate().unwrap();
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.shards.cpus, CpuSelection::All);
        assert_eq!(config.shards.io_memory_bytes, 10 << 20);
        assert_eq!(config.network.listen, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(config.kafka.listen, None, "the default, 127.0.0.1:9092 if free");
        assert_eq!(config.storage.write_bytes_max, 4 << 20);
        assert_eq!(config.topics.default_partitions, 0);
    }

    #[test]
    fn an_unknown_key_is_rejected_by_name() {
        let message = error_text("[storage]\nsegment_byts = 1\n");
        assert!(message.contains("segment_byts"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn a_bad_value_is_reported_under_its_tuning_name() {
        let message = error_text("[storage]\nsegment_bytes = 100\n");
        assert!(message.contains("storage.segment_bytes 100"), "{message}");
        assert!(!message.contains("segment_bytes_max"), "the log's internal name leaked: {message}");
    }

    #[test]
    fn an_unreadable_file_names_its_cause_once() {
        let message = TuningConfig::load(Path::new("/nonexistent/ringbroker.toml")).unwrap_err().to_string();
        assert_eq!(message.matches("No such file").count(), 1, "{message}");
        assert!(std::error::Error::source(&TuningConfig::load(Path::new("/nonexistent/x.toml")).unwrap_err()).is_none());
    }

    #[test]
    fn an_unknown_section_is_rejected_by_name() {
        let message = error_text("[sharding]\ncpus = \"all\"\n");
        assert!(message.contains("sharding"), "{message}");
    }

    #[test]
    fn cpus_accept_all_or_a_list() {
        let all = parse("[shards]\ncpus = \"all\"\n").unwrap();
        assert_eq!(all.shards.cpus, CpuSelection::All);
        let list = parse("[shards]\ncpus = [0, 2, 3]\n").unwrap();
        assert_eq!(list.shards.cpus, CpuSelection::List(vec![0, 2, 3]));
    }

    #[test]
    fn cpus_reject_another_string_by_name() {
        let message = error_text("[shards]\ncpus = \"some\"\n");
        assert!(message.contains("some"), "{message}");
    }

    #[test]
    fn cpus_reject_an_empty_list_and_negative_numbers() {
        assert!(error_text("[shards]\ncpus = []\n").contains("empty"));
        assert!(parse("[shards]\ncpus = [-1]\n").is_err());
    }

    #[test]
    fn parse_cpu_list_reads_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-3,5,7-8").unwrap(), vec![0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("\t0-1\n").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("4,2,2-3").unwrap(), vec![2, 3, 4]);
    }

    #[test]
    fn parse_cpu_list_rejects_malformed_input() {
        for input in ["", " ", "a", "1-", "-1", "3-1", "1,,2", "1-2-3", "0-99999999999999999999", "0-100000"] {
            assert!(matches!(parse_cpu_list(input), Err(ConfigError::CpuList { .. })), "{input:?} should be rejected");
        }
        let reason = |input| match parse_cpu_list(input) {
            Err(ConfigError::CpuList { reason, .. }) => reason,
            other => panic!("{input:?}: {other:?}"),
        };
        assert_eq!(reason(" "), CpuListError::Empty);
        assert_eq!(reason("1,x"), CpuListError::NotACpu("x".into()));
        assert_eq!(reason("3-1"), CpuListError::Backwards("3-1".into()));
        assert_eq!(reason("0-100000"), CpuListError::BeyondLimit(100000));
        let message = parse_cpu_list("0-100000").unwrap_err().to_string();
        assert_eq!(message, "malformed CPU list \"0-100000\": cpu 100000 is beyond the Linux limit of 8192 CPUs");
    }

    #[test]
    fn format_cpu_list_compacts_ranges() {
        assert_eq!(format_cpu_list(&[0, 1]), "0-1");
        assert_eq!(format_cpu_list(&[7, 0, 1, 2, 3, 5, 8]), "0-3,5,7-8");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn resolving_an_unavailable_cpu_names_it() {
        let config = parse("[shards]\ncpus = [0, 99]\n").unwrap();
        let message = config.resolve_cpus_within(&[0, 1]).unwrap_err().to_string();
        assert_eq!(message, "cpu 99 is not available to this process (allowed: 0-1)");
    }

    #[test]
    fn resolving_against_this_process_affinity() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        assert_eq!(TuningConfig::default().resolve_cpus().unwrap(), allowed);
        let config = parse(&format!("[shards]\ncpus = [{}, {}]\n", allowed[0], CPU_LIMIT - 1)).unwrap();
        let message = config.resolve_cpus().unwrap_err().to_string();
        assert!(message.contains(&(CPU_LIMIT - 1).to_string()), "{message}");
    }

    #[test]
    fn resolving_keeps_order_and_drops_duplicates() {
        let config = parse("[shards]\ncpus = [3, 1, 3, 2]\n").unwrap();
        assert_eq!(config.resolve_cpus_within(&[0, 1, 2, 3]).unwrap(), vec![3, 1, 2]);
        assert!(matches!(TuningConfig::default().resolve_cpus_within(&[]), Err(ConfigError::NoCpus)));
    }

    #[test]
    fn a_shard_count_takes_the_first_cpus_or_shares_them_in_turn() {
        let config = parse("[shards]\ncpus = [3, 1, 2]\ncount = 2\n").unwrap();
        assert_eq!(config.resolve_cpus_within(&[0, 1, 2, 3]).unwrap(), vec![3, 1]);
        let config = parse("[shards]\ncpus = [3, 1]\ncount = 5\n").unwrap();
        assert_eq!(config.resolve_cpus_within(&[0, 1, 2, 3]).unwrap(), vec![3, 1, 3, 1, 3]);
        let config = parse("[shards]\ncount = 4\n").unwrap();
        assert_eq!(config.resolve_cpus_within(&[5]).unwrap(), vec![5; 4]);
        let config = parse("[shards]\ncpus = [0, 1]\ncount = 17\n").unwrap();
        let message = config.resolve_cpus_within(&[0, 1]).unwrap_err().to_string();
        assert_eq!(message, "invalid tuning: shards.count 17 would put more than 8 shards on each of 2 CPUs (0-1)");
        let config = parse("[shards]\ncpus = [0, 1]\ncount = 16\n").unwrap();
        assert_eq!(config.resolve_cpus_within(&[0, 1]).unwrap().len(), 16);
    }

    #[test]
    fn shard_ports_must_fit_below_65536_and_avoid_the_shared_port() {
        let config = parse("[network]\nshard_port_base = 65534\n").unwrap();
        assert!(config.resolve_cpus_within(&[0, 1]).is_ok());
        assert!(config.resolve_cpus_within(&[0, 1, 2]).unwrap_err().to_string().contains("65534"));
        let config = parse("[network]\nlisten = \"127.0.0.1:9101\"\n").unwrap();
        assert!(config.resolve_cpus_within(&[0, 1]).unwrap_err().to_string().contains("9101"));
        let config = parse("[network]\nshard_port_base = 0\n").unwrap();
        assert_eq!(config.network.shard_port(0), None);
        assert_eq!(TuningConfig::default().network.shard_port(2), Some(9102));
    }

    #[test]
    fn interval_flush_converts_into_the_log_policy() {
        let config = parse("[storage]\nflush_policy = \"interval\"\nflush_interval_ms = 20\n").unwrap();
        assert_eq!(config.log_config().flush, FlushPolicy::Interval { interval_ms: 20 });
        assert_eq!(TuningConfig::default().log_config().flush, FlushPolicy::EveryBatch);
        assert!(error_text("[storage]\nflush_policy = \"sometimes\"\n").contains("sometimes"));
        assert!(error_text("[storage]\nflush_policy = \"interval\"\nflush_interval_ms = 0\n").contains("interval"));
    }

    #[test]
    fn the_sync_method_applies_to_every_batch_segments_only() {
        let default = TuningConfig::default().log_config();
        assert_eq!((default.sync, default.segment_sync()), (SyncMethod::Fdatasync, SyncMethod::Fdatasync));
        let dsync = parse("[storage]\nsync_method = \"dsync\"\n").unwrap().log_config();
        assert_eq!(dsync.segment_sync(), SyncMethod::Dsync);
        // The interval policy needs writes that do not wait for the disk.
        let interval = parse("[storage]\nflush_policy = \"interval\"\nsync_method = \"dsync\"\n").unwrap();
        assert_eq!(interval.log_config().segment_sync(), SyncMethod::Fdatasync);
        assert!(error_text("[storage]\nsync_method = \"fsync\"\n").contains("fsync"));
    }

    #[test]
    fn zero_means_none_for_optional_limits() {
        let config =
            parse("[storage]\nsegment_age_ms = 0\nretention_bytes = 0\nretention_ms = 0\n").unwrap().log_config();
        assert_eq!((config.segment_age_max_ms, config.retention_bytes, config.retention_ms), (None, None, None));
        let config =
            parse("[storage]\nsegment_age_ms = 9\nretention_bytes = 10\nretention_ms = 11\n").unwrap().log_config();
        assert_eq!(
            (config.segment_age_max_ms, config.retention_bytes, config.retention_ms),
            (Some(9), Some(10), Some(11))
        );
        assert_eq!(TuningConfig::default().shards.spin_before_park(), None);
    }

    #[test]
    fn out_of_range_values_are_rejected_by_key() {
        let cases = [
            ("[shards]\nring_depth = 100\n", "ring_depth"),
            ("[shards]\nring_depth = 65536\n", "ring_depth"),
            ("[shards]\nio_memory_bytes = 4096\n", "io_memory_bytes"),
            ("[shards]\nnetwork_shares = 5000\n", "network_shares"),
            ("[shards]\nflush_shares = 0\n", "flush_shares"),
            ("[shards]\npreempt_timer_us = 0\n", "preempt_timer_us"),
            ("[network]\nmax_connections_per_shard = 0\n", "max_connections_per_shard"),
            ("[network]\nrequest_timeout_ms = 0\n", "request_timeout_ms"),
            ("[network]\ninflight_bytes_per_shard = 1024\n", "inflight_bytes_per_"),
            ("[network]\nmax_frame_bytes = 1048576\n", "max_frame_bytes"),
            ("[storage]\nwrite_bytes_max = 16777216\n", "write_bytes_max"),
            ("[storage]\nwrite_request_bytes = 1000\n", "write_request_bytes"),
            ("[storage]\nretention_check_interval_ms = 0\n", "retention_check_interval_ms"),
            ("[storage]\ndata_dir = \"\"\n", "data_dir"),
        ];
        for (text, key) in cases {
            let message = error_text(text);
            assert!(message.contains(key), "{text:?} gave {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn a_bad_listen_address_is_rejected() {
        assert!(parse("[network]\nlisten = \"nowhere\"\n").is_err());
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[shards]\nring_depth = 3\n").unwrap();
        let message = TuningConfig::load(&path).unwrap_err().to_string();
        assert!(message.contains("bad.toml") && message.contains("ring_depth"), "{message}");
        let missing = dir.path().join("missing.toml");
        assert!(TuningConfig::load(&missing).unwrap_err().to_string().contains("missing.toml"));
    }

    #[test]
    fn every_tuning_profile_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let config = TuningConfig::load(&path).unwrap_or_else(|error| panic!("{error}"));
                config.log_config().validate().unwrap();
                names.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        for expected in ["default.toml", "dev-2core.toml", "latency.toml", "throughput.toml", "many-core.toml"] {
            assert!(names.iter().any(|name| name == expected), "tuning/{expected} is missing");
        }
    }

    #[test]
    fn the_default_profile_matches_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/default.toml");
        let file = format!("{:?}", TuningConfig::load(&path).unwrap());
        assert_eq!(file, format!("{:?}", TuningConfig::default()));
    }
}
