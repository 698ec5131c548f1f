//! The `ringbroker` command: the broker (`serve`) and tools for humans
//! (topics, produce, consume, consumer groups, stats). Errors are one clear
//! line on stderr and a non-zero exit.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use glommio::{LocalExecutorBuilder, Placement};
use ringbroker::client::{
    decode_records, Client, ClientError, ClientOptions, ClientTls, ConsumedRecord, GroupConfig, GroupConsumer,
    GroupRecord, Producer, ProducerConfig, ProducerRecord, SaslCredentials, SendFuture, StartPosition,
};
use ringbroker::config::{CpuSelection, TuningConfig};
use ringbroker::protocol::acl::{
    AclBinding, AclFilter, Operation, PatternType, Permission, ResourceType, CLUSTER_NAME,
};
use ringbroker::protocol::batch::Compression;
use ringbroker::protocol::scram::{self, ScramCredential, ScramMechanism};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::{CredentialDeletion, CredentialUpsert};
use ringbroker::protocol::wire::{ErrorCode, FetchPartitionResult, OffsetSpec, ResetTarget, TopicPartitions};
use ringbroker::server::{Broker, ShardPorts};
use ringbroker::shard::metadata::{self, PARTITIONS_PER_TOPIC_MAX};
use ringbroker::storage::lock::DirLock;

#[derive(Parser, Debug)]
#[command(name = "ringbroker", version, about = "A thread-per-core, io_uring message broker")]
struct Cli {
    /// Log level or filter (also RUST_LOG), e.g. info, debug, ringbroker=trace.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Log lines as text, or as one JSON object per line (for collectors).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Address of any shard of the broker (client commands).
    #[arg(long, global = true, default_value = "127.0.0.1:9091")]
    broker: SocketAddr,
    /// Client commands: speak TLS to the broker, trusting the CA
    /// certificates in this PEM file.
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// The name expected on the broker's certificate (default: the
    /// --broker address's IP).
    #[arg(long, global = true, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Client commands: present this PEM certificate (mutual TLS; its name
    /// is the principal), with --tls-client-key.
    #[arg(long, global = true, requires_all = ["tls_ca", "tls_client_key"])]
    tls_client_cert: Option<PathBuf>,
    /// The private key of --tls-client-cert.
    #[arg(long, global = true, requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
    /// Client commands: log in as this user (SASL). The password comes from
    /// the RINGBROKER_PASSWORD environment variable or --password-file.
    #[arg(long, global = true)]
    user: Option<String>,
    /// A file whose first line is the --user's password.
    #[arg(long, global = true, requires = "user")]
    password_file: Option<PathBuf>,
    /// SCRAM-SHA-512, SCRAM-SHA-256, or PLAIN (only over TLS).
    #[arg(long, global = true, default_value = "SCRAM-SHA-512")]
    sasl_mechanism: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Create, list, describe or delete topics.
    Topic {
        #[command(subcommand)]
        action: TopicAction,
    },
    /// Produce lines from standard input, one event per line.
    Produce(ProduceArgs),
    /// Print events of a partition, one per line (with --group: of every
    /// partition the group assigns this consumer, committing as it goes).
    Consume(ConsumeArgs),
    /// List, describe or reset consumer groups.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Show every shard's counters and fdatasync latency.
    Stats,
    /// A live view: per shard rates, busy time and latency; per group lag.
    Top(TopArgs),
    /// Create, delete or list the users who may log in (SCRAM credentials).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Add, remove or list access control lists (checked once logins are on).
    Acl {
        #[command(subcommand)]
        action: AclAction,
    },
}

#[derive(Subcommand, Debug)]
enum AclAction {
    /// Allows (or with --deny, denies) a principal operations on a resource.
    Add(AclArgs),
    /// Removes the bindings matching the filter (unset fields match any).
    Remove(AclArgs),
    /// Lists the bindings matching the filter (unset fields match any).
    List(AclArgs),
}

#[derive(Args, Debug)]
struct AclArgs {
    /// User:name, or User:* for every principal.
    #[arg(long)]
    principal: Option<String>,
    /// read, write, create, delete, alter, describe, describe-configs,
    /// alter-configs, idempotent-write or all; repeat for several.
    #[arg(long = "operation")]
    operations: Vec<String>,
    /// A topic (or * for every topic).
    #[arg(long, conflicts_with_all = ["group", "cluster"])]
    topic: Option<String>,
    /// A consumer group (or * for every group).
    #[arg(long, conflicts_with = "cluster")]
    group: Option<String>,
    /// The cluster itself (creating topics, managing users and ACLs).
    #[arg(long)]
    cluster: bool,
    /// The name is a prefix: the binding covers every name starting with it.
    #[arg(long)]
    prefixed: bool,
    /// A client address the binding applies to (default: any, *).
    #[arg(long)]
    host: Option<String>,
    /// Deny instead of allow.
    #[arg(long)]
    deny: bool,
}

#[derive(Subcommand, Debug)]
enum UserAction {
    /// Sets a user's password (creating the user): salted SCRAM credentials
    /// are stored, never the password. The password is the first line of
    /// --new-password-file, or of standard input.
    Create {
        name: String,
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// scram-sha-256, scram-sha-512, or both.
        #[arg(long, default_value = "both")]
        mechanism: String,
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
        /// Write to this stopped broker's data directory instead of asking a
        /// running broker (how the first superuser is made).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Removes a user's credentials (both mechanisms unless --mechanism).
    Delete {
        name: String,
        #[arg(long, default_value = "both")]
        mechanism: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Every user with its mechanisms.
    List {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// A tuning file (see tuning/); built-in defaults without one.
    #[arg(long)]
    tuning: Option<PathBuf>,
    /// Data directory (overrides the tuning file).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Shared listen address (overrides the tuning file); port 0 picks one.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Per-shard ports: "none", "auto" (picked by the OS) or a base port.
    #[arg(long)]
    shard_ports: Option<String>,
    /// CPUs to run shards on, e.g. "0,1" or "all" (overrides the tuning file).
    #[arg(long)]
    cpus: Option<String>,
    /// How many shards (overrides the tuning file's shards.count): fewer
    /// than the CPUs take the first ones; more share CPUs in turn, for
    /// trying several shards on a small machine.
    #[arg(long)]
    shards: Option<usize>,
    /// Where to serve Prometheus metrics (/metrics over HTTP); port 0 picks
    /// one (overrides the tuning file).
    #[arg(long, conflicts_with = "no_metrics")]
    metrics_listen: Option<SocketAddr>,
    /// Do not serve /metrics.
    #[arg(long)]
    no_metrics: bool,
    /// The Kafka API's bootstrap address (overrides the tuning file).
    #[arg(long, conflicts_with = "no_kafka")]
    kafka_listen: Option<SocketAddr>,
    /// Per-shard Kafka ports: "auto" (picked by the OS) or a base port.
    #[arg(long)]
    kafka_shard_ports: Option<String>,
    /// Do not serve the Kafka API.
    #[arg(long)]
    no_kafka: bool,
    /// How shards are advertised to Kafka clients (overrides the tuning
    /// file): per-shard (each shard a broker of its own port, requests go
    /// straight to the owning core) or node (one broker on the bootstrap
    /// port, shards forward).
    #[arg(long, value_enum)]
    kafka_mode: Option<KafkaModeArg>,
    /// TLS on the native and Kafka listeners: the PEM certificate chain
    /// (overrides the tuning file; needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KafkaModeArg {
    PerShard,
    Node,
}

#[derive(Args, Debug)]
struct TopArgs {
    /// Time between redraws (milliseconds).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop after this many redraws (default: until interrupted).
    #[arg(long)]
    iterations: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum TopicAction {
    Create {
        name: String,
        /// 0: the broker's default (one per shard).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        partitions: i64,
    },
    List,
    /// Partitions with their offsets, and the topic's configs.
    Describe {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Change the topic's configs (Kafka's names: retention.ms,
    /// retention.bytes, segment.bytes, compression.type,
    /// message.timestamp.type, max.message.bytes).
    Alter {
        name: String,
        /// KEY=VALUE; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Return KEY to the broker's setting; repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// Check the change without applying it.
        #[arg(long)]
        validate_only: bool,
    },
    /// Delete a partition's records below an offset (all of them by default).
    DeleteRecords {
        name: String,
        #[arg(long)]
        partition: u32,
        /// Records below this offset go; default: every record.
        #[arg(long)]
        before: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Acks {
    None,
    Written,
    Durable,
}

#[derive(Args, Debug)]
struct ProduceArgs {
    topic: String,
    /// Send every event to this partition. Without it, an event's key picks
    /// its partition (Kafka's murmur2 partitioner, so keys land where Kafka
    /// clients put them) and events without a key fill one partition's batch
    /// at a time.
    #[arg(long)]
    partition: Option<u32>,
    /// Split each line at the first occurrence into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    #[arg(long, value_enum, default_value = "durable")]
    acks: Acks,
    /// Compress batches: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// A header on every event: KEY=VALUE, or KEY alone for a null value.
    /// Repeat for several.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// Most events sent before waiting for the broker's acknowledgements.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    topic: String,
    /// Read only this partition and print values alone. Without it every
    /// partition is read and each line starts with its partition and
    /// offset. Ignored with --group (the group assigns partitions).
    #[arg(long)]
    partition: Option<u32>,
    /// earliest, latest or an offset. With --group: where partitions the
    /// group never committed start (earliest or latest).
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Consume as a member of this consumer group: every partition of the
    /// topic, shared with the group's other members, resuming from its
    /// committed offsets and committing what was printed on exit.
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    max_events: Option<u64>,
    /// Stop when nothing arrives for this long (milliseconds; default: never).
    #[arg(long)]
    idle_exit_ms: Option<u64>,
    /// Print the key before each value, and the offset with --partition
    /// (with --group: the topic, partition, offset and key).
    #[arg(long)]
    verbose: bool,
    /// Print each event's timestamp (milliseconds since the epoch) after
    /// its offset.
    #[arg(long)]
    timestamps: bool,
    /// Print each event's headers before its value, as KEY=VALUE joined by
    /// commas (a null value prints as KEY alone).
    #[arg(long)]
    headers: bool,
}

/// One consumed event as a `consume` line: `lead` columns (partition,
/// offset), then the timestamp, key and headers as asked, then the value.
fn event_line(mut columns: Vec<String>, record: &ConsumedRecord, args: &ConsumeArgs, key: bool) -> String {
    let text = |bytes: &Option<Bytes>| String::from_utf8_lossy(bytes.as_deref().unwrap_or_default()).into_owned();
    if args.timestamps {
        columns.push(record.timestamp_ms.to_string());
    }
    if key {
        columns.push(text(&record.key));
    }
    if args.headers {
        let headers: Vec<String> = record
            .headers
            .iter()
            .map(|(name, value)| match value {
                Some(bytes) => format!("{name}={}", String::from_utf8_lossy(bytes)),
                None => name.clone(),
            })
            .collect();
        columns.push(headers.join(","));
    }
    columns.push(text(&record.value));
    columns.join("\t")
}

#[derive(Subcommand, Debug)]
enum GroupAction {
    /// Every group with its coordinating shard, state and member count.
    List,
    /// Members and their partitions; committed offset, log end and lag per
    /// partition.
    Describe { group: String },
    /// Move the group's committed offsets of a topic (only while the group
    /// has no members).
    Reset {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest or an offset.
        #[arg(long)]
        to: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // Colour only for a person at a terminal: escape codes in a redirected
    // log file are noise. NO_COLOR (no-color.org) turns it off everywhere.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        // One object per line, with the spans (shard, connection) it is in.
        LogFormat::Json => logs.json().with_current_span(false).with_span_list(true).init(),
    }
    let result = run(cli);
    if let Err(error) = result {
        eprintln!("ringbroker: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let sasl = match &cli.user {
        None => None,
        Some(user) => Some(SaslCredentials {
            mechanism: cli.sasl_mechanism.to_ascii_uppercase(),
            user: user.clone(),
            password: read_password(cli.password_file.as_deref(), "RINGBROKER_PASSWORD")?,
        }),
    };
    let client_certificate = cli.tls_client_cert.zip(cli.tls_client_key);
    let broker =
        Target { addr: cli.broker, tls_ca: cli.tls_ca, tls_server_name: cli.tls_server_name, client_certificate, sasl };
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic { action } => with_client(broker, move |client| topic(client, action)),
        Command::Produce(args) => with_client(broker, move |client| produce(client, args)),
        Command::Consume(args) => with_client(broker, move |client| consume(client, args)),
        Command::Group { action } => with_client(broker, move |client| group(client, action)),
        Command::Stats => with_client(broker, stats),
        Command::Top(args) => {
            let addr = broker.addr;
            with_client(broker, move |client| top(client, addr, args))
        }
        Command::User { action } => user(broker, action),
        Command::Acl { action } => acl(broker, action),
    }
}

/// A password: the first line of `file`, else the environment variable
/// `env`.
fn read_password(file: Option<&std::path::Path>, env: &str) -> anyhow::Result<String> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => std::env::var(env).with_context(|| format!("no password: set {env} or give --password-file"))?,
    };
    let password = text.lines().next().unwrap_or_default().to_string();
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    Ok(password)
}

fn mechanisms(name: &str) -> anyhow::Result<Vec<ScramMechanism>> {
    if name.eq_ignore_ascii_case("both") {
        return Ok(ScramMechanism::ALL.to_vec());
    }
    let mechanism = ScramMechanism::from_name(name)
        .with_context(|| format!("--mechanism {name:?}: expected scram-sha-256, scram-sha-512 or both"))?;
    Ok(vec![mechanism])
}

fn user(broker: Target, action: UserAction) -> anyhow::Result<()> {
    match action {
        UserAction::Create { name, new_password_file, mechanism, iterations, data_dir } => {
            scram::validate_user_name(&name)?;
            let password = match new_password_file {
                Some(path) => read_password(Some(&path), "")?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
                    let password = line.trim_end_matches(['\r', '\n']).to_string();
                    anyhow::ensure!(!password.is_empty(), "the password is empty");
                    password
                }
            };
            let upserts: Vec<CredentialUpsert> = mechanisms(&mechanism)?
                .into_iter()
                .map(|mechanism| {
                    let salt = scram::random_salt();
                    let salted_password = mechanism.salt_password(password.as_bytes(), &salt, iterations);
                    CredentialUpsert { user: name.clone(), mechanism, iterations, salt, salted_password }
                })
                .collect();
            change_users(broker, data_dir, upserts, Vec::new())?;
            println!("set the password of user {name}");
        }
        UserAction::Delete { name, mechanism, data_dir } => {
            let deletions = mechanisms(&mechanism)?
                .into_iter()
                .map(|mechanism| CredentialDeletion { user: name.clone(), mechanism })
                .collect();
            change_users(broker, data_dir, Vec::new(), deletions)?;
            println!("deleted user {name}");
        }
        UserAction::List { data_dir } => {
            let users = match data_dir {
                Some(dir) => {
                    let _lock = lock_stopped(&dir)?;
                    let metadata = metadata::load(&dir)?;
                    metadata
                        .users
                        .iter()
                        .map(|(user, credentials)| {
                            (user.clone(), credentials.iter().map(|(m, c)| (*m, c.iterations)).collect::<Vec<_>>())
                        })
                        .collect()
                }
                None => run_client(broker, |client| async move { Ok(client.describe_credentials().await?) })?,
            };
            for (user, credentials) in users {
                let mechanisms: Vec<String> = credentials
                    .iter()
                    .map(|(m, iterations)| format!("{} ({iterations} iterations)", m.name()))
                    .collect();
                println!("{user}\t{}", mechanisms.join(", "));
            }
        }
    }
    Ok(())
}

/// The resource an `acl` command names, if any.
fn acl_resource(args: &AclArgs) -> Option<(ResourceType, String)> {
    match (&args.topic, &args.group, args.cluster) {
        (Some(topic), _, _) => Some((ResourceType::Topic, topic.clone())),
        (_, Some(group), _) => Some((ResourceType::Group, group.clone())),
        (_, _, true) => Some((ResourceType::Cluster, CLUSTER_NAME.to_string())),
        _ => None,
    }
}

fn acl_operations(args: &AclArgs) -> anyhow::Result<Vec<Operation>> {
    args.operations
        .iter()
        .map(|name| {
            Operation::from_name(name).with_context(|| {
                let known: Vec<&str> = Operation::ALL.iter().map(|operation| operation.name()).collect();
                format!("--operation {name:?}: expected one of {}", known.join(", "))
            })
        })
        .collect()
}

fn acl(broker: Target, action: AclAction) -> anyhow::Result<()> {
    let print = |bindings: &[AclBinding]| {
        for b in bindings {
            let pattern = if b.pattern == PatternType::Prefixed { " (prefix)" } else { "" };
            let permission = if b.permission == Permission::Deny { "deny" } else { "allow" };
            println!(
                "{permission}\t{}\t{}\t{} {}{pattern}\thost {}",
                b.principal,
                b.operation.name(),
                b.resource_type.name(),
                b.resource_name,
                b.host
            );
        }
    };
    match action {
        AclAction::Add(args) => {
            let (resource_type, resource_name) =
                acl_resource(&args).context("name a resource: --topic, --group or --cluster")?;
            let principal = args.principal.clone().context("--principal is required (User:name or User:*)")?;
            let operations = acl_operations(&args)?;
            anyhow::ensure!(!operations.is_empty(), "--operation is required");
            let bindings: Vec<AclBinding> = operations
                .into_iter()
                .map(|operation| AclBinding {
                    resource_type,
                    resource_name: resource_name.clone(),
                    pattern: if args.prefixed { PatternType::Prefixed } else { PatternType::Literal },
                    principal: principal.clone(),
                    host: args.host.clone().unwrap_or_else(|| "*".into()),
                    operation,
                    permission: if args.deny { Permission::Deny } else { Permission::Allow },
                })
                .collect();
            let added = bindings.clone();
            run_client(broker, |client| async move { Ok(client.alter_acls(bindings, Vec::new()).await?) })?;
            print(&added);
        }
        AclAction::Remove(args) | AclAction::List(args) if acl_operations(&args)?.len() > 1 => {
            anyhow::bail!("a filter takes at most one --operation")
        }
        AclAction::Remove(args) => {
            let filter = acl_filter(&args)?;
            let removed =
                run_client(broker, |client| async move { Ok(client.alter_acls(Vec::new(), vec![filter]).await?) })?;
            print(&removed);
            println!("removed {}", plural(removed.len() as u64, "binding"));
        }
        AclAction::List(args) => {
            let filter = acl_filter(&args)?;
            print(&run_client(broker, |client| async move { Ok(client.describe_acls(filter).await?) })?);
        }
    }
    Ok(())
}

fn acl_filter(args: &AclArgs) -> anyhow::Result<AclFilter> {
    let resource = acl_resource(args);
    Ok(AclFilter {
        resource_type: resource.as_ref().map(|(kind, _)| *kind),
        resource_name: resource.map(|(_, name)| name),
        pattern: args.prefixed.then_some(PatternType::Prefixed),
        principal: args.principal.clone(),
        host: args.host.clone(),
        operation: acl_operations(args)?.first().copied(),
        permission: args.deny.then_some(Permission::Deny),
    })
}

/// Locks a stopped broker's data directory.
fn lock_stopped(dir: &std::path::Path) -> anyhow::Result<DirLock> {
    DirLock::acquire(dir).map_err(|error| anyhow::anyhow!("{error} (--data-dir needs the broker stopped)"))
}

/// Applies credential changes through a running broker, or straight to a
/// stopped broker's data directory.
fn change_users(
    broker: Target,
    data_dir: Option<PathBuf>,
    upserts: Vec<CredentialUpsert>,
    deletions: Vec<CredentialDeletion>,
) -> anyhow::Result<()> {
    let Some(dir) = data_dir else {
        let results =
            run_client(broker, |client| async move { Ok(client.alter_credentials(upserts, deletions).await?) })?;
        for result in results {
            anyhow::ensure!(result.error.is_ok(), "user {}: {} ({})", result.name, result.message, result.error.name());
        }
        return Ok(());
    };
    let _lock = lock_stopped(&dir)?;
    let mut metadata = metadata::load(&dir)?;
    for upsert in upserts {
        let credential = ScramCredential::from_salted_password(
            upsert.mechanism,
            &upsert.salt,
            upsert.iterations,
            &upsert.salted_password,
        )?;
        metadata.upsert_credential(&upsert.user, upsert.mechanism, credential)?;
    }
    for deletion in deletions {
        metadata.delete_credential(&deletion.user, deletion.mechanism)?;
    }
    metadata::store(&dir, &metadata).with_context(|| format!("writing the metadata in {}", dir.display()))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.tuning {
        Some(path) => TuningConfig::load(path)?,
        None => TuningConfig::default(),
    };
    if let Some(data) = args.data {
        config.storage.data_dir = data;
    }
    if let Some(listen) = args.listen {
        config.network.listen = listen;
    }
    if let Some(cpus) = args.cpus {
        config.shards.cpus = parse_cpus(&cpus)?;
    }
    if let Some(count) = args.shards {
        config.shards.count = count;
    }
    if let Some(listen) = args.metrics_listen {
        config.metrics.listen = Some(listen);
    }
    if args.no_metrics {
        config.metrics.enabled = false;
    }
    if let Some(listen) = args.kafka_listen {
        config.kafka.listen = Some(listen);
    }
    match args.kafka_shard_ports.as_deref() {
        None => {}
        Some("auto") => config.kafka.shard_port_base = Some(0),
        Some(base) => {
            config.kafka.shard_port_base = Some(base.parse().context("--kafka-shard-ports takes auto or a port")?);
        }
    }
    if args.no_kafka {
        config.kafka.enabled = false;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
    }
    match args.kafka_mode {
        Some(KafkaModeArg::PerShard) => config.kafka.mode = ringbroker::config::KafkaMode::PerShard,
        Some(KafkaModeArg::Node) => config.kafka.mode = ringbroker::config::KafkaMode::Node,
        None => {}
    }
    let shard_ports = match args.shard_ports.as_deref() {
        None if config.network.shard_port_base == 0 => ShardPorts::Disabled,
        None => ShardPorts::Base(config.network.shard_port_base),
        Some("none") => ShardPorts::Disabled,
        Some("auto") => ShardPorts::Ephemeral,
        Some(base) => ShardPorts::Base(base.parse().context("--shard-ports takes none, auto or a port")?),
    };
    let broker = Broker::start(config, shard_ports)?;
    if let Some(keys) = broker.tls_keys() {
        reload_on_sighup(keys)?;
    }
    let stop = broker.stop_handle();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&stop)).context("installing a signal handler")?;
    }
    // One line that scripts and tests wait for (shard_ports stays last).
    let metrics = broker.metrics_addr().map_or("off".to_string(), |addr| format!("http://{addr}/metrics"));
    let kafka = broker.kafka_addr().map_or("off".to_string(), |addr| addr.to_string());
    println!(
        "ringbroker listening on {} shards={} cpus={:?} metrics={metrics} kafka={kafka} kafka_ports={:?} shard_ports={:?}",
        broker.addr(),
        broker.cpus().len(),
        broker.cpus(),
        broker.kafka_ports(),
        broker.shard_ports()
    );
    std::io::stdout().flush()?;
    broker.wait()?;
    if stop.load(Ordering::SeqCst) {
        tracing::info!("stopped cleanly");
    }
    Ok(())
}

/// Re-reads the TLS certificate and key on each SIGHUP (key rotation):
/// new connections get the new certificate, open ones keep theirs. A file
/// that does not load leaves the old certificate in use.
fn reload_on_sighup(keys: std::sync::Arc<ringbroker::server::tls::TlsKeys>) -> anyhow::Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                match keys.reload() {
                    Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
                    Err(error) => {
                        tracing::error!(%error, "SIGHUP: the TLS certificate did not reload; the old one stays")
                    }
                }
            }
        })
        .context("starting the TLS reload thread")?;
    Ok(())
}

fn parse_cpus(text: &str) -> anyhow::Result<CpuSelection> {
    if text == "all" {
        return Ok(CpuSelection::All);
    }
    let cpus = text.split(',').map(|cpu| cpu.trim().parse::<usize>()).collect::<Result<Vec<_>, _>>();
    Ok(CpuSelection::List(cpus.with_context(|| format!("--cpus {text:?}: expected \"all\" or a list like 0,1"))?))
}

/// The broker a client command talks to, and how.
struct Target {
    addr: SocketAddr,
    tls_ca: Option<PathBuf>,
    tls_server_name: Option<String>,
    /// (certificate, key) for mutual TLS.
    client_certificate: Option<(PathBuf, PathBuf)>,
    sasl: Option<SaslCredentials>,
}

/// Runs `job` with a client and returns what it returns.
fn run_client<T, F, Fut>(target: Target, job: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + 'static,
{
    let (sender, receiver) = std::sync::mpsc::channel();
    with_client(target, move |client| async move {
        let _ = sender.send(job(client).await?);
        Ok(())
    })?;
    receiver.recv().context("the client command ended without an answer")
}

/// Runs a client command on a small executor of its own.
fn with_client<F, Fut>(target: Target, command: F) -> anyhow::Result<()>
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    let broker = target.addr;
    let tls = match &target.tls_ca {
        None => None,
        Some(ca) => {
            let name = target.tls_server_name.clone().unwrap_or_else(|| broker.ip().to_string());
            let tls = match &target.client_certificate {
                None => ClientTls::from_ca_file(ca, &name),
                Some((cert, key)) => ClientTls::with_client_certificate(ca, &name, cert, key),
            };
            Some(tls.context("--tls-ca")?)
        }
    };
    let options = ClientOptions { tls, sasl: target.sasl.clone(), ..ClientOptions::default() };
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 << 10)
        .spawn(move || async move {
            let client = Client::connect(broker, options).await.with_context(|| format!("connecting to {broker}"))?;
            command(client).await
        })
        .map_err(|error| anyhow::anyhow!("starting an executor: {error}"))?
        .join()
        .map_err(|error| anyhow::anyhow!("the client executor failed: {error}"))?
}

async fn topic(client: Client, action: TopicAction) -> anyhow::Result<()> {
    match action {
        TopicAction::Create { name, partitions } => {
            let asked = u32::try_from(partitions)
                .ok()
                .filter(|count| *count <= PARTITIONS_PER_TOPIC_MAX)
                .with_context(|| {
                    format!(
                        "--partitions {partitions}: a topic has 1 to {PARTITIONS_PER_TOPIC_MAX} partitions \
                         (0: the broker's default, one per shard)"
                    )
                })?;
            client.create_topic(&name, asked).await.with_context(|| format!("creating topic {name}"))?;
            let count = client.partitions(&name).await?;
            println!("created topic {name} with {}", plural(u64::from(count), "partition"));
        }
        TopicAction::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        TopicAction::List => {
            for topic in client.metadata(None).await?.topics {
                println!("{}\t{} partitions", topic.name, topic.partitions.len());
            }
        }
        TopicAction::Describe { name } => {
            let metadata = client.metadata(Some(vec![name.clone()])).await?;
            let Some(topic) = metadata.topics.into_iter().next().filter(|topic| topic.error.is_ok()) else {
                bail!("topic {name} does not exist");
            };
            println!("topic {name}: {} partitions", topic.partitions.len());
            println!("partition\tshard\tearliest\tlatest");
            for p in topic.partitions {
                let earliest = client.list_offsets(&name, p.partition, OffsetSpec::Earliest).await?;
                let latest = client.list_offsets(&name, p.partition, OffsetSpec::Latest).await?;
                let show = |offset: Option<Offset>| offset.map_or("-".to_string(), |offset| offset.to_string());
                println!("{}\t{}\t{}\t{}", p.partition, p.shard, show(earliest), show(latest));
            }
            println!("config\tvalue\tsource");
            for config in client.describe_configs(&name).await? {
                let source = if config.is_default { "broker" } else { "topic" };
                println!("{}\t{}\t{source}", config.name, config.value);
            }
        }
        TopicAction::Alter { name, set, delete, validate_only } => {
            if set.is_empty() && delete.is_empty() {
                bail!("nothing to change: give --set KEY=VALUE or --delete KEY");
            }
            let set = set
                .iter()
                .map(|pair| match pair.split_once('=') {
                    Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
                    _ => Err(anyhow::anyhow!("--set {pair:?}: expected KEY=VALUE")),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            client
                .alter_configs(&name, set, delete, validate_only)
                .await
                .with_context(|| format!("altering topic {name}"))?;
            println!("{} topic {name}", if validate_only { "validated a change of" } else { "altered" });
        }
        TopicAction::DeleteRecords { name, partition, before } => {
            let before = before
                .map(|offset| Offset::new(offset).with_context(|| format!("--before {offset}: not an offset")))
                .transpose()?;
            let start = client
                .delete_records(&name, PartitionId(partition), before)
                .await
                .with_context(|| format!("deleting records of {name}-{partition}"))?;
            println!("{name}-{partition} now starts at offset {start}");
        }
    }
    Ok(())
}

async fn produce(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    let acks = match args.acks {
        Acks::None => AckLevel::None,
        Acks::Written => AckLevel::Written,
        Acks::Durable => AckLevel::Durable,
    };
    let topic = args.topic.as_str();
    let partitions = topic_partitions(&client, topic).await?;
    if let Some(partition) = args.partition.filter(|partition| *partition >= partitions) {
        bail!("partition {partition} does not exist: topic {topic} has {}", plural(u64::from(partitions), "partition"));
    }
    let headers: Vec<(&str, Option<&[u8]>)> = args
        .headers
        .iter()
        .map(|header| match header.split_once('=') {
            Some((name, value)) => (name, Some(value.as_bytes())),
            None => (header.as_str(), None),
        })
        .collect();
    let config = ProducerConfig { acks, compression: args.compression, ..ProducerConfig::default() };
    let producer = Producer::new(client, config)?;
    let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
    let mut sent = Vec::with_capacity(args.batch.max(1));
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let (key, value) = match args.key_separator.as_deref().and_then(|sep| line.split_once(sep)) {
            Some((key, value)) => (Some(key.as_bytes()), value.as_bytes()),
            None => (None, line.as_bytes()),
        };
        let record = ProducerRecord {
            key,
            partition: args.partition.map(PartitionId),
            headers: &headers,
            ..ProducerRecord::new(topic, value)
        };
        sent.push(producer.send(record).await?);
        if sent.len() >= args.batch.max(1) {
            confirm(&producer, topic, &mut sent, &mut per_partition).await?;
        }
    }
    confirm(&producer, topic, &mut sent, &mut per_partition).await?;
    producer.close().await;
    let total: u64 = per_partition.values().sum();
    let spread: Vec<String> =
        per_partition.iter().map(|(partition, count)| format!("partition {partition}: {count}")).collect();
    let place = match per_partition.keys().collect::<Vec<_>>()[..] {
        [only] => format!("{topic}-{only}"),
        _ => format!("{topic} ({})", spread.join(", ")),
    };
    if acks == AckLevel::None {
        eprintln!("sent {} to {place} without waiting for acknowledgements (--acks none)", plural(total, "event"));
    } else {
        eprintln!("produced {} to {place}", plural(total, "event"));
    }
    Ok(())
}

/// Sends what is buffered and waits for every event in `sent`, counting
/// them per partition; the first failure stops the command.
async fn confirm(
    producer: &Producer,
    topic: &str,
    sent: &mut Vec<SendFuture>,
    per_partition: &mut BTreeMap<u32, u64>,
) -> anyhow::Result<()> {
    producer.flush().await;
    for future in sent.drain(..) {
        let partition = future.partition();
        future.await.with_context(|| format!("producing to {topic}-{partition}"))?;
        *per_partition.entry(partition.0).or_default() += 1;
    }
    Ok(())
}

/// A topic's partition count, or a clear error if it does not exist.
async fn topic_partitions(client: &Client, topic: &str) -> anyhow::Result<u32> {
    match client.partitions(topic).await {
        Ok(count) => Ok(count),
        Err(ClientError::NoSuchTopic(_)) => bail!("topic {topic} does not exist"),
        Err(error) => Err(error).with_context(|| format!("looking up topic {topic}")),
    }
}

/// `1 event`, `2 events`.
fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

async fn consume(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    if let Some(group) = args.group.clone() {
        return consume_group(client, args, group).await;
    }
    let topic = args.topic.as_str();
    let count = topic_partitions(&client, topic).await?;
    let partitions: Vec<PartitionId> = match args.partition {
        Some(partition) if partition >= count => {
            bail!("partition {partition} does not exist: topic {topic} has {}", plural(u64::from(count), "partition"))
        }
        Some(partition) => vec![PartitionId(partition)],
        None => (0..count).map(PartitionId).collect(),
    };
    let mut readers = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let offset = start_offset(&client, topic, partition, &args.from).await?;
        readers.push(PartitionReader { partition, offset, fetch: None });
    }
    let mut printed = 0u64;
    let mut idle_since = std::time::Instant::now();
    loop {
        for reader in &mut readers {
            if reader.fetch.is_none() {
                reader.fetch = Some(fetch_from(&client, topic, reader.partition, reader.offset));
            }
        }
        let (index, fetched) = first_fetched(&mut readers).await;
        let reader = &mut readers[index];
        let data = match fetched {
            Ok((_, data)) => data,
            Err(error) if error.code() == Some(ErrorCode::OFFSET_OUT_OF_RANGE) => {
                return Err(out_of_range(&client, topic, reader.partition, reader.offset).await);
            }
            Err(error) => return Err(error).with_context(|| format!("fetching from {topic}-{}", reader.partition)),
        };
        let mut out = std::io::stdout().lock();
        // Compressed batches are inflated by the client's decoder.
        let mut records = Vec::new();
        let next = decode_records(&data, reader.offset, &mut records).context("the broker sent a damaged batch")?;
        for record in records {
            let lead = match (args.partition.is_some(), args.verbose) {
                (true, false) => vec![],
                (true, true) => vec![record.offset.to_string()],
                (false, _) => vec![reader.partition.to_string(), record.offset.to_string()],
            };
            writeln!(out, "{}", event_line(lead, &record, &args, args.verbose))?;
            printed += 1;
            if args.max_events.is_some_and(|max| printed >= max) {
                return Ok(());
            }
        }
        if let Some(next) = next {
            reader.offset = next.max(reader.offset);
        }
        out.flush()?;
        if !data.is_empty() {
            idle_since = std::time::Instant::now();
        } else if args.idle_exit_ms.is_some_and(|ms| idle_since.elapsed() >= Duration::from_millis(ms)) {
            return Ok(());
        }
    }
}

type FetchFuture = Pin<Box<dyn Future<Output = Result<(FetchPartitionResult, Bytes), ClientError>>>>;

/// One partition `consume` reads: where it is, and its fetch in flight.
struct PartitionReader {
    partition: PartitionId,
    offset: Offset,
    fetch: Option<FetchFuture>,
}

/// A long-poll fetch of one partition (up to 1 MiB, waiting up to 500 ms).
fn fetch_from(client: &Client, topic: &str, partition: PartitionId, offset: Offset) -> FetchFuture {
    let (client, topic) = (client.clone(), topic.to_owned());
    Box::pin(async move { client.fetch(&topic, partition, offset, 1 << 20, 500).await })
}

/// Waits for the first of the readers' fetches to finish; returns its
/// reader's index and result, and leaves the others in flight.
async fn first_fetched(readers: &mut [PartitionReader]) -> (usize, Result<(FetchPartitionResult, Bytes), ClientError>) {
    std::future::poll_fn(|cx| {
        for (index, reader) in readers.iter_mut().enumerate() {
            if let Some(fetch) = reader.fetch.as_mut() {
                if let Poll::Ready(result) = fetch.as_mut().poll(cx) {
                    reader.fetch = None;
                    return Poll::Ready((index, result));
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// Where `--from` starts one partition.
async fn start_offset(client: &Client, topic: &str, partition: PartitionId, from: &str) -> anyhow::Result<Offset> {
    let spec = match from {
        "earliest" => OffsetSpec::Earliest,
        "latest" => OffsetSpec::Latest,
        number => {
            let offset = number.parse().ok().and_then(Offset::new);
            return offset.with_context(|| format!("--from {number:?}: expected earliest, latest or an offset"));
        }
    };
    let offset = client.list_offsets(topic, partition, spec).await?;
    offset.with_context(|| format!("{topic}-{partition} has no {from} offset"))
}

/// The error for a start offset the partition does not hold, naming the
/// offsets it does hold.
async fn out_of_range(client: &Client, topic: &str, partition: PartitionId, offset: Offset) -> anyhow::Error {
    let earliest = client.list_offsets(topic, partition, OffsetSpec::Earliest).await;
    let latest = client.list_offsets(topic, partition, OffsetSpec::Latest).await;
    match (earliest, latest) {
        (Ok(Some(earliest)), Ok(Some(latest))) if earliest == latest => anyhow::anyhow!(
            "offset {offset} is out of range for {topic}-{partition}: it is empty (the next offset is {latest})"
        ),
        (Ok(Some(earliest)), Ok(Some(latest))) => anyhow::anyhow!(
            "offset {offset} is out of range for {topic}-{partition}: it holds offsets {earliest} to {}",
            latest.get().saturating_sub(1)
        ),
        _ => anyhow::anyhow!("offset {offset} is out of range for {topic}-{partition}"),
    }
}

/// `consume --group`: one member of the group until --max-events,
/// --idle-exit-ms or SIGINT/SIGTERM, then commit what was printed and leave.
async fn consume_group(client: Client, args: ConsumeArgs, group: String) -> anyhow::Result<()> {
    let start = match args.from.as_str() {
        "earliest" => StartPosition::Earliest,
        "latest" => StartPosition::Latest,
        _ => bail!("with --group, --from takes earliest or latest (the group's committed offsets decide the rest)"),
    };
    let config = GroupConfig { start, ..GroupConfig::new(group.clone(), vec![args.topic.clone()]) };
    let mut consumer = GroupConsumer::join(client, config).await.with_context(|| format!("joining group {group}"))?;
    // Interrupting must still commit and leave, or the group re-delivers
    // what was printed and waits a session timeout for this member.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once, should committing or leaving hang.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .context("installing a signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    let consumed = print_group_records(&mut consumer, &args, &stop).await;
    let closed = consumer.close().await.with_context(|| format!("committing and leaving group {group}"));
    consumed?;
    closed
}

async fn print_group_records(
    consumer: &mut GroupConsumer,
    args: &ConsumeArgs,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut printed = 0u64;
    let mut idle_since = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        let mut out = std::io::stdout().lock();
        for (index, record) in records.iter().enumerate() {
            if args.max_events.is_some_and(|max| printed >= max) {
                // Unprinted records must not be committed: move back to them.
                rewind_unprinted(consumer, &records[index..]);
                out.flush()?;
                return Ok(());
            }
            let lead = if args.verbose {
                vec![record.topic.to_string(), record.partition.to_string(), record.record.offset.to_string()]
            } else {
                vec![]
            };
            writeln!(out, "{}", event_line(lead, &record.record, args, args.verbose))?;
            printed += 1;
        }
        out.flush()?;
        if args.max_events.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        if !records.is_empty() {
            idle_since = std::time::Instant::now();
        } else if args.idle_exit_ms.is_some_and(|ms| idle_since.elapsed() >= Duration::from_millis(ms)) {
            return Ok(());
        }
    }
    Ok(())
}

/// Sets each partition's position back to its first record in `unprinted`
/// (records of one partition come in offset order).
fn rewind_unprinted(consumer: &mut GroupConsumer, unprinted: &[GroupRecord]) {
    let mut rewound: Vec<(&str, PartitionId)> = Vec::new();
    for record in unprinted {
        let key = (&*record.topic, record.partition);
        if !rewound.contains(&key) {
            consumer.seek(key.0, key.1, record.record.offset);
            rewound.push(key);
        }
    }
}

async fn group(client: Client, action: GroupAction) -> anyhow::Result<()> {
    match action {
        GroupAction::List => {
            for group in client.list_groups().await? {
                println!("{}\tshard {}\t{}\t{} members", group.group, group.coordinator, group.state, group.members);
            }
        }
        GroupAction::Describe { group } => match describe_group(&client, &group).await {
            Err(error) if error.code() == Some(ErrorCode::UNKNOWN_GROUP) => {
                bail!("group {group} does not exist: it has no members and no committed offsets")
            }
            other => other.with_context(|| format!("describing group {group}"))?,
        },
        GroupAction::Reset { group, topic, to } => {
            let target = match to.as_str() {
                "earliest" => ResetTarget::Earliest,
                "latest" => ResetTarget::Latest,
                number => ResetTarget::Offset(
                    number.parse().ok().and_then(Offset::new).context("--to takes earliest, latest or an offset")?,
                ),
            };
            match client.reset_group(&group, &topic, target).await {
                Err(error) if error.code() == Some(ErrorCode::GROUP_NOT_EMPTY) => {
                    bail!("group {group} is not empty: stop its consumers before resetting it")
                }
                other => other.with_context(|| format!("resetting group {group} on topic {topic}"))?,
            }
            let count = client.partitions(&topic).await?;
            let partitions = (0..count).map(PartitionId).collect();
            let asked = vec![TopicPartitions { topic: topic.clone(), partitions }];
            println!("reset group {group} on topic {topic}");
            for committed in client.fetch_committed(&group, Some(asked)).await? {
                println!("{}\t{}\t{}", committed.topic, committed.partition, show_offset(committed.offset));
            }
        }
    }
    Ok(())
}

async fn describe_group(client: &Client, group: &str) -> Result<(), ClientError> {
    let description = client.describe_group(group).await?;
    println!(
        "group {}: {}, generation {}, {} members",
        description.group,
        description.state,
        description.generation,
        description.members.len()
    );
    if !description.members.is_empty() {
        println!("member\tassignment");
    }
    for member in &description.members {
        let assignment: Vec<String> = member
            .assignment
            .iter()
            .map(|topic| {
                let partitions: Vec<String> = topic.partitions.iter().map(ToString::to_string).collect();
                format!("{}:{}", topic.topic, partitions.join(","))
            })
            .collect();
        println!(
            "{}\t{}",
            member.member_id,
            if assignment.is_empty() { "-".to_string() } else { assignment.join(" ") }
        );
    }
    if !description.offsets.is_empty() {
        println!("topic\tpartition\tcommitted\tlog-end\tlag");
    }
    let total: u64 = description.offsets.iter().filter_map(|lag| lag.lag).sum();
    for lag in &description.offsets {
        let past_end = matches!((lag.committed, lag.log_end), (Some(committed), Some(end)) if committed > end);
        let shown = match lag.lag {
            Some(lag) => lag.to_string(),
            None if past_end => "past-end".to_string(),
            None => "-".to_string(),
        };
        if past_end {
            eprintln!(
                "warning: the committed offset of {}-{} is past its log end; \
                 `ringbroker group reset` moves it back",
                lag.topic, lag.partition
            );
        }
        println!(
            "{}\t{}\t{}\t{}\t{shown}",
            lag.topic,
            lag.partition,
            show_offset(lag.committed),
            show_offset(lag.log_end)
        );
    }
    if !description.offsets.is_empty() {
        println!("total lag: {total}");
    }
    Ok(())
}

fn show_offset(offset: Option<Offset>) -> String {
    offset.map_or("-".to_string(), |offset| offset.to_string())
}

async fn stats(client: Client) -> anyhow::Result<()> {
    for shard in client.stats().await?.shards {
        println!("shard {}", shard.shard);
        for (name, value) in &shard.counters {
            println!("  {name:<22} {value}");
        }
        let latencies = [
            ("flush wait", &shard.flush_queue_latency_us),
            ("write", &shard.write_latency_us),
            ("fsync", &shard.fsync_latency_us),
            ("request", &shard.produce_request_latency_us),
            ("produce", &shard.produce_latency_us),
            ("commit", &shard.commit_latency_us),
        ];
        for (name, percentiles) in latencies.into_iter().filter(|(_, percentiles)| !percentiles.is_empty()) {
            let line: Vec<String> = percentiles.iter().map(|(p, us)| format!("p{p}={us}us")).collect();
            println!("  {:<22} {}", format!("{name} latency"), line.join(" "));
        }
        for failed in &shard.failed_partitions {
            println!("  FAILED partition       {failed}");
        }
    }
    Ok(())
}

/// One reading of the broker for `top`.
struct TopSample {
    at: std::time::Instant,
    shards: Vec<ShardReading>,
    groups: Vec<GroupReading>,
}

/// A shard's counters by name, and its p99 latencies since it started (µs).
struct ShardReading {
    shard: u16,
    counters: BTreeMap<String, u64>,
    produce_p99_us: Option<u64>,
    fsync_p99_us: Option<u64>,
}

struct GroupReading {
    group: String,
    state: String,
    members: u32,
    /// Summed over its partitions; `None` if it could not be described.
    lag: Option<u64>,
}

/// Groups `top` describes each redraw, at most.
const TOP_GROUPS_MAX: usize = 20;

async fn top(client: Client, broker: SocketAddr, args: TopArgs) -> anyhow::Result<()> {
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Option<TopSample> = None;
    let mut drawn = 0u64;
    loop {
        let sample = top_sample(&client).await?;
        let mut out = String::new();
        if terminal {
            // Home and clear: redraw in place.
            out.push_str("\x1b[H\x1b[2J");
        }
        render_top(&mut out, broker, interval, previous.as_ref(), &sample);
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        drawn += 1;
        if args.iterations.is_some_and(|iterations| drawn >= iterations) {
            return Ok(());
        }
        previous = Some(sample);
        glommio::timer::sleep(interval).await;
    }
}

async fn top_sample(client: &Client) -> anyhow::Result<TopSample> {
    let at = std::time::Instant::now();
    let p99 = |percentiles: &[(f64, u64)]| percentiles.iter().find(|(p, _)| *p == 99.0).map(|(_, us)| *us);
    let shards = client
        .stats()
        .await?
        .shards
        .into_iter()
        .map(|shard| ShardReading {
            shard: shard.shard.0,
            produce_p99_us: p99(&shard.produce_latency_us),
            fsync_p99_us: p99(&shard.fsync_latency_us),
            counters: shard.counters.into_iter().collect(),
        })
        .collect();
    let mut groups = Vec::new();
    for listing in client.list_groups().await?.into_iter().take(TOP_GROUPS_MAX) {
        let lag = match client.describe_group(&listing.group).await {
            Ok(description) => Some(description.offsets.iter().filter_map(|lag| lag.lag).sum()),
            Err(_) => None,
        };
        groups.push(GroupReading { group: listing.group, state: listing.state, members: listing.members, lag });
    }
    Ok(TopSample { at, shards, groups })
}

/// Rates between two samples (the first frame shows counts only).
fn render_top(out: &mut String, broker: SocketAddr, interval: Duration, before: Option<&TopSample>, now: &TopSample) {
    use std::fmt::Write as _;
    let seconds = before.map(|before| now.at.duration_since(before.at).as_secs_f64()).filter(|s| *s > 0.0);
    let _ = writeln!(out, "ringbroker top: {broker}, every {:.1} s", interval.as_secs_f64());
    let _ = writeln!(
        out,
        "{:<6}{:>12}{:>10}{:>12}{:>10}{:>7}{:>7}{:>14}{:>12}",
        "shard", "in ev/s", "in MB/s", "out ev/s", "out MB/s", "busy%", "conns", "produce p99*", "fsync p99*"
    );
    for reading in &now.shards {
        let counter = |name: &str| reading.counters.get(name).copied().unwrap_or(0);
        let rate = |name: &str| -> Option<f64> {
            let previous = before?.shards.iter().find(|previous| previous.shard == reading.shard)?;
            let delta = counter(name).saturating_sub(previous.counters.get(name).copied().unwrap_or(0));
            Some(delta as f64 / seconds?)
        };
        let show = |value: Option<f64>, scale: f64, decimals: usize| {
            value.map_or("-".to_string(), |value| format!("{:.*}", decimals, value / scale))
        };
        let busy = rate("busy_us").map(|us_per_s| us_per_s / 1e4);
        let ms = |us: &Option<u64>| us.map_or("-".to_string(), |us| format!("{:.2} ms", us as f64 / 1000.0));
        let _ = writeln!(
            out,
            "{:<6}{:>12}{:>10}{:>12}{:>10}{:>7}{:>7}{:>14}{:>12}",
            reading.shard,
            show(rate("events_in"), 1.0, 0),
            show(rate("bytes_in"), 1e6, 1),
            show(rate("events_out"), 1.0, 0),
            show(rate("bytes_out"), 1e6, 1),
            show(busy, 1.0, 0),
            counter("connections_open"),
            ms(&reading.produce_p99_us),
            ms(&reading.fsync_p99_us),
        );
    }
    let _ = writeln!(out, "* since the broker started");
    if now.groups.is_empty() {
        let _ = writeln!(out, "no consumer groups");
        return;
    }
    let _ = writeln!(out, "{:<30}{:<14}{:>8}{:>14}", "group", "state", "members", "lag");
    for group in &now.groups {
        let lag = group.lag.map_or("-".to_string(), |lag| lag.to_string());
        let _ = writeln!(out, "{:<30}{:<14}{:>8}{lag:>14}", group.group, group.state, group.members);
    }
}
