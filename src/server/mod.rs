//! The server: one pinned executor per shard, its listeners and connections,
//! and the broker's start and graceful stop.
//!
//! Every shard accepts on the shared port (glommio sets SO_REUSEPORT, so
//! the kernel spreads connections over the shards) and on a port of its own
//! that shard-aware clients use to reach the owner of a partition directly.
//!
//! Start: the data directory is locked, metadata loaded, the listen
//! addresses claimed (nothing else may listen on them, see `exclusive.rs`),
//! then shard 0 is started first so that when the shared port is 0 the one the OS picks is
//! known to the others; each shard binds, joins the mesh and opens its
//! partitions before the broker reports ready. Stop (SIGINT/SIGTERM or
//! [`Broker::stop`]): shards stop accepting, let in-flight requests finish,
//! flush and fsync every partition, and exit.

mod access;
mod admission;
mod budget;
mod connection;
mod dispatch;
pub mod exclusive;
pub mod kafka;
mod kafka_acls;
mod kafka_admin;
mod kafka_codes;
mod kafka_group_acl;
mod limits;
mod login;
pub mod metrics;
pub mod sasl;
pub mod tls;
mod warn_limit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tracing::Instrument;

use crate::config::{ConfigError, KafkaMode, TuningConfig};
use crate::protocol::types::ShardId;
use crate::runtime::notify::Notify;
use crate::runtime::spawn_wake_ticker;
use crate::shard::{mesh, metadata, Shard, ShardConfig, ShardMessage, ShardStartError, MESH_CHANNEL_CAPACITY};
use crate::storage::{DirLock, StorageError};

pub use limits::Limits;

/// How often each shard looks at the stop flag. Stopping is rare; a short
/// poll keeps the flag a plain atomic instead of a cross-thread waker.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Which per-shard ports to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPorts {
    /// Only the shared port.
    Disabled,
    /// Shard i listens on base + i.
    Base(u16),
    /// Each shard listens on a port the OS picks (tests, embedded brokers).
    Ephemeral,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Rendered to text: storage errors are single-threaded (`Rc`) values.
    #[error("{0}")]
    Storage(String),
    #[error("metadata: {0}")]
    Metadata(std::io::Error),
    #[error("shard {shard}: {error}")]
    Shard { shard: usize, error: ShardLaunchError },
    #[error(transparent)]
    Address(#[from] exclusive::AddressError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Why one shard's thread did not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ShardLaunchError {
    // glommio's errors as `std::io::Error`s: theirs are not `Sync`.
    #[error("starting executor: {0}")]
    Executor(std::io::Error),
    #[error("binding {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("reading the port bound for {addr}: {error}")]
    LocalAddr { addr: SocketAddr, error: std::io::Error },
    #[error("{0}")]
    Start(ShardStartError),
    /// Another shard failed while this one waited for every shard's ports.
    #[error("stopped during start-up")]
    Stopped,
    #[error("did not start within {} s", START_TIMEOUT.as_secs())]
    Timeout,
    #[error("panicked")]
    Panicked,
}

/// How long the broker waits for each next shard's start report.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running broker: its shard threads and how to reach it.
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    shard_ports: Vec<u16>,
    metrics_addr: Option<SocketAddr>,
    kafka_addr: Option<SocketAddr>,
    kafka_ports: Vec<u16>,
    cpus: Vec<usize>,
    stop: Arc<AtomicBool>,
    threads: Vec<ExecutorJoinHandle<()>>,
    tls_keys: Option<Arc<tls::TlsKeys>>,
    _lock: DirLock,
}

/// What each shard reports to the starting thread.
enum StartReport {
    Bound {
        shard: usize,
        shared_port: u16,
        own_port: u16,
        metrics_port: Option<u16>,
        kafka_shared_port: Option<u16>,
        kafka_own_port: Option<u16>,
    },
    Ready,
    Failed {
        shard: usize,
        error: ShardLaunchError,
    },
}

impl Broker {
    /// Starts every shard and returns once all are serving.
    pub fn start(config: TuningConfig, shard_ports: ShardPorts) -> Result<Broker, ServerError> {
        config.validate()?;
        let cpus = config.resolve_cpus()?;
        let (tls, tls_keys) = match config.tls.files() {
            Some((cert, key)) => {
                let keys = tls::TlsKeys::load(cert, key).map_err(ServerError::Tls)?;
                let client_ca = config.tls.client_ca_file.as_deref();
                let server = tls::server_config(Arc::clone(&keys), client_ca, config.tls.client_auth)
                    .map_err(ServerError::Tls)?;
                (Some(server), Some(keys))
            }
            None => (None, None),
        };
        // Absolute, so every path the shards log or sync names the same
        // place whatever the current directory.
        let data_dir = std::path::absolute(&config.storage.data_dir).map_err(ServerError::Metadata)?;
        let lock =
            DirLock::acquire(&data_dir).map_err(|error: StorageError| ServerError::Storage(error.to_string()))?;
        let mut cluster = metadata::load(&data_dir).map_err(ServerError::Metadata)?;
        if cluster.rebalance_for(cpus.len()) {
            tracing::warn!(shards = cpus.len(), "fewer shards than before: moved partitions of missing shards");
            metadata::store(&data_dir, &cluster).map_err(ServerError::Metadata)?;
        }
        // Nothing else may listen on our addresses; held until every shard
        // has bound, so two brokers starting at once cannot both pass.
        let mut addrs = listen_addrs(config.network.listen, shard_ports, cpus.len());
        addrs.extend(config.metrics.listen.filter(|_| config.metrics.enabled));
        addrs.extend(kafka_addrs(config.kafka.listen, config.kafka.shard_port_base, &config.kafka, cpus.len()));
        let claims = exclusive::claim(&addrs)?;
        let (metrics_listen, _metrics_claim) = metrics_listen(&config.metrics)?;
        let (kafka_listen, kafka_base, _kafka_claim) = kafka_listen(&config.kafka, cpus.len())?;
        let mut metrics_addr = metrics_listen;
        let stop = Arc::new(AtomicBool::new(false));
        let mut mesh: Vec<Option<mesh::MeshEnds<ShardMessage>>> =
            mesh::build(cpus.len(), MESH_CHANNEL_CAPACITY).into_iter().map(Some).collect();
        let (reports, reported) = mpsc::channel();
        let mut threads = Vec::with_capacity(cpus.len());
        let mut shared_addr = config.network.listen;
        let mut kafka_addr = config.kafka.enabled.then_some(kafka_listen);
        let mut own_ports = vec![0u16; cpus.len()];
        let mut kafka_ports = vec![0u16; cpus.len()];
        let ports = Arc::new(Mutex::new(vec![None; cpus.len()]));
        let mut spawn = |shard: usize, shared_addr: SocketAddr, kafka_addr: Option<SocketAddr>| {
            let launch = ShardLaunch {
                shard,
                cpu: cpus[shard],
                shared_addr,
                own_port: match shard_ports {
                    ShardPorts::Disabled => None,
                    ShardPorts::Base(base) => Some(base.checked_add(shard as u16).unwrap_or(0)),
                    ShardPorts::Ephemeral => Some(0),
                },
                // Shard 0 serves /metrics; a scrape gathers every shard.
                metrics_addr: if shard == 0 { metrics_listen } else { None },
                kafka_addr,
                kafka_own_port: match (config.kafka.enabled, config.kafka.mode) {
                    (true, KafkaMode::PerShard) if kafka_base == 0 => Some(0),
                    (true, KafkaMode::PerShard) => Some(kafka_base.checked_add(shard as u16).unwrap_or(0)),
                    _ => None,
                },
                config: config.clone(),
                tls: tls.clone(),
                tls_keys: tls_keys.clone(),
                data_dir: data_dir.clone(),
                metadata: cluster.clone(),
                mesh: mesh[shard].take().expect("each shard is launched once"),
                stop: Arc::clone(&stop),
                reports: reports.clone(),
                ports: Arc::clone(&ports),
                shard_count: cpus.len(),
            };
            launch.spawn()
        };
        // Shard 0 first: it fixes the shared port the others then share.
        threads.push(spawn(0, shared_addr, kafka_addr).map_err(|error| ServerError::Shard { shard: 0, error })?);
        let mut ready = 0;
        let mut bound = 0;
        let mut failure = None;
        let mut launched = 1;
        while ready < cpus.len() && failure.is_none() {
            match reported.recv_timeout(START_TIMEOUT) {
                Ok(StartReport::Bound {
                    shard,
                    shared_port,
                    own_port,
                    metrics_port,
                    kafka_shared_port,
                    kafka_own_port,
                }) => {
                    own_ports[shard] = own_port;
                    kafka_ports[shard] = kafka_own_port.unwrap_or(0);
                    if let (Some(addr), Some(port), 0) = (kafka_addr.as_mut(), kafka_shared_port, shard) {
                        addr.set_port(port);
                    }
                    if let (Some(addr), Some(port)) = (metrics_addr.as_mut(), metrics_port) {
                        addr.set_port(port);
                    }
                    bound += 1;
                    if shard == 0 {
                        shared_addr.set_port(shared_port);
                        while launched < cpus.len() {
                            match spawn(launched, shared_addr, kafka_addr) {
                                Ok(thread) => threads.push(thread),
                                Err(error) => failure = Some(ServerError::Shard { shard: launched, error }),
                            }
                            launched += 1;
                        }
                    }
                }
                Ok(StartReport::Ready) => ready += 1,
                Ok(StartReport::Failed { shard, error }) => failure = Some(ServerError::Shard { shard, error }),
                Err(_) => failure = Some(ServerError::Shard { shard: bound, error: ShardLaunchError::Timeout }),
            }
        }
        drop(claims);
        let broker = Broker {
            addr: shared_addr,
            shard_ports: own_ports,
            metrics_addr,
            kafka_addr,
            kafka_ports,
            cpus,
            stop,
            threads,
            tls_keys,
            _lock: lock,
        };
        if let Some(error) = failure {
            broker.stop();
            let _ = broker.wait();
            return Err(error);
        }
        Ok(broker)
    }

    /// The shared address every shard accepts on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each shard's own port (0 when disabled).
    pub fn shard_ports(&self) -> &[u16] {
        &self.shard_ports
    }

    /// Where `/metrics` is served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Kafka API's bootstrap address, if enabled.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    /// Each shard's Kafka port (per-shard mode; 0 otherwise).
    pub fn kafka_ports(&self) -> &[u16] {
        &self.kafka_ports
    }

    /// The CPU each shard runs on.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// The listeners' certificate and key, when TLS is on: `reload` swaps in
    /// what the files hold now (on SIGHUP).
    pub fn tls_keys(&self) -> Option<Arc<tls::TlsKeys>> {
        self.tls_keys.clone()
    }

    /// A handle that stops the broker from any thread (a signal handler's).
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Asks every shard to stop; [`Broker::wait`] waits for them.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits until every shard has drained and exited.
    pub fn wait(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (shard, thread) in self.threads.into_iter().enumerate() {
            if thread.join().is_err() {
                result = Err(ServerError::Shard { shard, error: ShardLaunchError::Panicked });
            }
        }
        result
    }
}

/// Where `/metrics` goes: the configured address (claimed with the other
/// listeners), or the default one if it is free, or else a port the OS
/// picks. A second broker on one machine then still starts, and says where
/// its metrics are, instead of failing over an auxiliary port.
fn metrics_listen(
    config: &crate::config::MetricsConfig,
) -> Result<(Option<SocketAddr>, Option<exclusive::PortClaims>), ServerError> {
    if !config.enabled {
        return Ok((None, None));
    }
    if let Some(listen) = config.listen {
        return Ok((Some(listen), None));
    }
    let default = crate::config::METRICS_LISTEN_DEFAULT;
    match exclusive::claim_if_free(default)? {
        Some(claim) => Ok((Some(default), Some(claim))),
        None => {
            tracing::warn!(%default, "the default metrics address is in use: serving /metrics on a port the OS picks");
            Ok((Some(SocketAddr::new(default.ip(), 0)), None))
        }
    }
}

/// The Kafka API's configured addresses (claimed with the other
/// listeners): the bootstrap one and, in per-shard mode with a port base,
/// each shard's. Unset ones are not here (see [`kafka_listen`]).
fn kafka_addrs(
    listen: Option<SocketAddr>,
    base: Option<u16>,
    config: &crate::config::KafkaConfig,
    shards: usize,
) -> Vec<SocketAddr> {
    if !config.enabled {
        return Vec::new();
    }
    let mut addrs: Vec<SocketAddr> = listen.into_iter().collect();
    let ip = listen.unwrap_or(crate::config::KAFKA_LISTEN_DEFAULT).ip();
    if let (KafkaMode::PerShard, Some(base)) = (config.mode, base.filter(|base| *base != 0)) {
        let ports = (0..shards).filter_map(|shard| u16::try_from(usize::from(base) + shard).ok());
        addrs.extend(ports.map(|port| SocketAddr::new(ip, port)));
    }
    addrs
}

/// The Kafka bootstrap address and per-shard port base to bind. What is
/// configured is used as it is (and was claimed with the other listeners).
/// What is left unset takes the defaults (9092, 9200 + shard) if they are
/// all free, else ports the OS picks, with a warning: a second broker or a
/// test on the same machine still starts, and says where its Kafka API is.
fn kafka_listen(
    config: &crate::config::KafkaConfig,
    shards: usize,
) -> Result<(SocketAddr, u16, Option<exclusive::PortClaims>), ServerError> {
    use crate::config::{KAFKA_LISTEN_DEFAULT, KAFKA_SHARD_PORT_BASE_DEFAULT};
    let listen = config.listen.unwrap_or(KAFKA_LISTEN_DEFAULT);
    let base = config.shard_port_base.unwrap_or(KAFKA_SHARD_PORT_BASE_DEFAULT);
    if !config.enabled {
        return Ok((listen, base, None));
    }
    let soft_listen = config.listen.is_none().then_some(listen);
    let soft_base = config.shard_port_base.is_none().then_some(base);
    let soft = kafka_addrs(soft_listen, soft_base, config, shards);
    if soft.is_empty() {
        return Ok((listen, base, None));
    }
    match exclusive::claim_if_free_all(&soft)? {
        Some(claims) => Ok((listen, base, Some(claims))),
        None => {
            tracing::warn!(%listen, base, "the default Kafka ports are in use: serving Kafka on ports the OS picks");
            let listen = if config.listen.is_none() { SocketAddr::new(listen.ip(), 0) } else { listen };
            let base = if config.shard_port_base.is_none() { 0 } else { base };
            Ok((listen, base, None))
        }
    }
}

/// Every address the shards will listen on (port 0: the OS picks one).
fn listen_addrs(shared: SocketAddr, shard_ports: ShardPorts, shards: usize) -> Vec<SocketAddr> {
    let mut addrs = vec![shared];
    if let ShardPorts::Base(base) = shard_ports {
        let ports = (0..shards).filter_map(|shard| u16::try_from(usize::from(base) + shard).ok());
        addrs.extend(ports.map(|port| SocketAddr::new(shared.ip(), port)));
    }
    addrs
}

/// Everything needed to start one shard's thread.
struct ShardLaunch {
    shard: usize,
    cpu: usize,
    shared_addr: SocketAddr,
    own_port: Option<u16>,
    metrics_addr: Option<SocketAddr>,
    /// The Kafka bootstrap address (all shards), and this shard's own port.
    kafka_addr: Option<SocketAddr>,
    kafka_own_port: Option<u16>,
    config: TuningConfig,
    /// The server side of TLS, when the tuning names a certificate.
    tls: Option<Arc<futures_rustls::rustls::ServerConfig>>,
    tls_keys: Option<Arc<tls::TlsKeys>>,
    data_dir: PathBuf,
    metadata: metadata::ClusterMetadata,
    mesh: mesh::MeshEnds<ShardMessage>,
    stop: Arc<AtomicBool>,
    reports: mpsc::Sender<StartReport>,
    /// Every shard's own native and Kafka ports, filled in as shards bind.
    ports: Arc<PortTable>,
    shard_count: usize,
}

impl ShardLaunch {
    fn spawn(self) -> Result<ExecutorJoinHandle<()>, ShardLaunchError> {
        let shards = &self.config.shards;
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(self.cpu))
            .name(&format!("shard-{}", self.shard))
            .io_memory(shards.io_memory_bytes)
            .ring_depth(shards.ring_depth)
            .preempt_timer(shards.preempt_timer());
        if let Some(spin) = shards.spin_before_park() {
            builder = builder.spin_before_park(spin);
        }
        let handle = builder.spawn(move || async move {
            let (shard, reports) = (self.shard, self.reports.clone());
            // Everything this shard logs carries its id (tasks it spawns
            // are instrumented with this span where they log).
            let span = tracing::info_span!("shard", shard);
            if let Err(error) = self.run().instrument(span).await {
                tracing::error!(shard, %error, "shard failed");
                let _ = reports.send(StartReport::Failed { shard, error });
            }
        });
        handle.map_err(|error| ShardLaunchError::Executor(error.into()))
    }

    async fn run(self) -> Result<(), ShardLaunchError> {
        if let Some(interval) = self.config.shards.wake_interval() {
            spawn_wake_ticker(interval);
        }
        let id = ShardId(self.shard as u16);
        let network = &self.config.network;
        let (shared, shared_port) = listen(self.shared_addr)?;
        let own = self.own_port.map(|port| listen(SocketAddr::new(self.shared_addr.ip(), port))).transpose()?;
        let own_port = own.as_ref().map_or(0, |(_, port)| *port);
        let metrics = self.metrics_addr.map(listen).transpose()?;
        let metrics_port = metrics.as_ref().map(|(_, port)| *port);
        let kafka_shared = self.kafka_addr.map(listen).transpose()?;
        let kafka_shared_port = kafka_shared.as_ref().map(|(_, port)| *port);
        let kafka_own = match (self.kafka_addr, self.kafka_own_port) {
            (Some(addr), Some(port)) => Some(listen(SocketAddr::new(addr.ip(), port))?),
            _ => None,
        };
        let kafka_own_port = kafka_own.as_ref().map(|(_, port)| *port);
        let _ = self.reports.send(StartReport::Bound {
            shard: self.shard,
            shared_port,
            own_port,
            metrics_port,
            kafka_shared_port,
            kafka_own_port,
        });
        tracing::debug!(shard = self.shard, shared_port, own_port, "bound");
        let (shard_ports, kafka_ports) = self.collect_ports(own_port, kafka_own_port.unwrap_or(0)).await?;
        tracing::debug!(shard = self.shard, ?shard_ports, "learned every shard's port");
        let shard_config = ShardConfig {
            id,
            shard_count: self.shard_count,
            data_dir: self.data_dir.clone(),
            log_config: self.config.log_config(),
            default_partitions: self.config.topics.default_partitions,
            partitions_max: self.config.topics.partitions_max,
            free_bytes_reserved: self.config.storage.free_bytes_reserved,
            inflated_bytes_max: self.config.network.max_frame_bytes,
            retention_check_interval: self.config.storage.retention_check_interval(),
            metadata: self.metadata.clone(),
            shard_ports,
            flush_shares: Some(self.config.shards.flush_shares),
            offsets_compact_after_bytes: crate::shard::offsets::COMPACT_AFTER_BYTES,
            clock: crate::shard::clock::Clock::Real,
        };
        let shard = Shard::start(shard_config, self.mesh).await.map_err(ShardLaunchError::Start)?;
        tracing::debug!(shard = self.shard, "joined the mesh and opened its partitions");
        let limits = Limits::from_config(network);
        let stopping = Rc::new(Stopping::default());
        let network_queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(self.config.shards.network_shares),
            // Latency::Matters would arm glommio's preemption machinery more
            // often, which in 0.9.0 can park an executor for good (see the
            // preempt_timer_us note in tuning/). Shares give network work
            // its priority instead.
            glommio::Latency::NotImportant,
            "network",
        );
        let gate = Rc::new(glommio::sync::Gate::new());
        let kafka = kafka_shared_port.map(|bootstrap_port| kafka::KafkaEndpoints {
            mode: self.config.kafka.mode,
            host: self.config.kafka.advertised_host.clone(),
            bootstrap_port,
            shard_ports: kafka_ports,
            auto_create_topics: self.config.kafka.auto_create_topics,
        });
        let server = Rc::new(connection::Server::new(
            Rc::clone(&shard),
            limits,
            Rc::clone(&stopping),
            Rc::clone(&gate),
            network_queue,
            kafka,
            (
                connection::TlsSetup {
                    acceptor: self.tls.clone().map(futures_rustls::TlsAcceptor::from),
                    native: self.config.tls.native,
                    kafka: self.config.tls.kafka,
                },
                sasl::AuthSetup::new(&self.config.auth),
            ),
        ));
        let accept = |listener: TcpListener, protocol: connection::Protocol| {
            glommio::spawn_local(Rc::clone(&server).accept_loop(listener, protocol).in_current_span())
        };
        let mut accept_loops = vec![accept(shared, connection::Protocol::Native)];
        accept_loops.extend(own.map(|(own, _)| accept(own, connection::Protocol::Native)));
        accept_loops.extend(kafka_shared.map(|(listener, _)| accept(listener, connection::Protocol::Kafka)));
        accept_loops.extend(kafka_own.map(|(listener, _)| accept(listener, connection::Protocol::Kafka)));
        if let Some((listener, _)) = metrics {
            let tls = self.tls.clone().filter(|_| self.config.tls.metrics).map(futures_rustls::TlsAcceptor::from);
            let keys = self.tls_keys.clone();
            let metrics =
                metrics::MetricsServer::new(Rc::clone(&shard), Rc::clone(&stopping), self.data_dir.clone(), tls, keys);
            accept_loops.push(glommio::spawn_local(Rc::new(metrics).accept_loop(listener).in_current_span()));
        }
        let _ = self.reports.send(StartReport::Ready);
        tracing::info!(shard = self.shard, cpu = self.cpu, shared_port, own_port, "shard serving");
        while !self.stop.load(Ordering::SeqCst) {
            glommio::timer::sleep(STOP_POLL).await;
        }
        tracing::info!(shard = self.shard, "stopping: draining connections");
        stopping.stop();
        for accept_loop in accept_loops {
            accept_loop.await;
        }
        let _ = gate.close().await;
        shard.close().await;
        tracing::info!(shard = self.shard, "stopped");
        Ok(())
    }

    /// Publishes this shard's own native and Kafka ports and waits until
    /// every shard has published its own (start-up only; the mutex never
    /// sees the data path).
    async fn collect_ports(&self, own_port: u16, kafka_port: u16) -> Result<(Vec<u16>, Vec<u16>), ShardLaunchError> {
        lock_ports(&self.ports)[self.shard] = Some((own_port, kafka_port));
        loop {
            let ports: Option<Vec<(u16, u16)>> = lock_ports(&self.ports).iter().copied().collect();
            if let Some(ports) = ports {
                return Ok(ports.into_iter().unzip());
            }
            // Another shard failed to start: the broker is being stopped.
            if self.stop.load(Ordering::SeqCst) {
                return Err(ShardLaunchError::Stopped);
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A listener on `addr` (port 0: one the OS picks), and the port it got.
fn listen(addr: SocketAddr) -> Result<(TcpListener, u16), ShardLaunchError> {
    let listener = TcpListener::bind(addr).map_err(|error| ShardLaunchError::Bind { addr, error: error.into() })?;
    let port = listener.local_addr().map_err(|error| ShardLaunchError::LocalAddr { addr, error: error.into() })?.port();
    Ok((listener, port))
}

/// Each shard's (native, Kafka) own ports as they bind, at start-up only.
type PortTable = Mutex<Vec<Option<(u16, u16)>>>;

fn lock_ports(ports: &PortTable) -> std::sync::MutexGuard<'_, Vec<Option<(u16, u16)>>> {
    ports.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shard-local "stop now" signal for accept loops and connections.
#[derive(Debug, Default)]
pub(crate) struct Stopping {
    stopped: std::cell::Cell<bool>,
    notify: Notify,
}

impl Stopping {
    pub(crate) fn stop(&self) {
        self.stopped.set(true);
        self.notify.notify_all();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Completes once stopping has begun.
    pub(crate) async fn wait(&self) {
        loop {
            let wait = self.notify.notified();
            if self.stopped.get() {
                return;
            }
            wait.await;
        }
    }
}
