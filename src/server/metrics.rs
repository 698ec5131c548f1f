//! `/metrics`: the broker's state in the Prometheus (OpenMetrics) text
//! format, served over HTTP by shard 0 on the `[metrics]` listen address.
//!
//! A scrape asks every shard for a snapshot over the mesh (see
//! `shard::snapshot`): shards keep their counters and histograms in plain
//! `Cell`s, and nothing on the hot path touches a shared atomic. The
//! snapshots are encoded with the `prometheus-client` crate (a collector
//! that runs at scrape time). Consumer lag is computed here, where every
//! partition's end and every group's committed offsets meet.
//!
//! Two formats: OpenMetrics (what the crate writes) for a scraper that asks
//! for it in `Accept` (Prometheus does), and the classic Prometheus text
//! format 0.0.4 otherwise (curl, `promtool check metrics`, older tools).
//! They differ, for our metrics, only in how a counter family is named in
//! its `# HELP` and `# TYPE` lines (`x` against `x_total`) and in the
//! `# EOF` line, so the classic text is derived from the OpenMetrics text
//! rather than written by a second encoder.
//!
//! The HTTP side is a minimal HTTP/1.1 responder rather than hyper: one
//! `GET` (or `HEAD`) per connection, answered and closed. It is small
//! enough to read in one sitting and every bound is explicit: a request
//! head of at most [`REQUEST_HEAD_BYTES_MAX`], read within
//! [`REQUEST_DEADLINE`], at most [`CONNECTIONS_MAX`] connections at once
//! (more are closed at once), and the response written within
//! [`RESPONSE_DEADLINE`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::shard::{LatencySnapshot, Shard, ShardSnapshot};

use super::Stopping;
use crate::runtime::stream::Stream;

/// Scrapes served at once; more connections are closed at once.
const CONNECTIONS_MAX: u64 = 16;
/// Largest request head (request line and headers) accepted.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
/// A request head must arrive within this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// A response must be taken by the client within this.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(10);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on one listener (shard 0's).
pub(crate) struct MetricsServer {
    shard: Rc<Shard>,
    stopping: Rc<Stopping>,
    data_dir: PathBuf,
    connections: Rc<Semaphore>,
    /// HTTPS when set (`tls.metrics`).
    tls: Option<futures_rustls::TlsAcceptor>,
    /// The listeners' certificate, for its reload counts.
    tls_keys: Option<std::sync::Arc<super::tls::TlsKeys>>,
}

impl MetricsServer {
    pub(crate) fn new(
        shard: Rc<Shard>,
        stopping: Rc<Stopping>,
        data_dir: PathBuf,
        tls: Option<futures_rustls::TlsAcceptor>,
        tls_keys: Option<std::sync::Arc<super::tls::TlsKeys>>,
    ) -> MetricsServer {
        let connections = Rc::new(Semaphore::new(CONNECTIONS_MAX));
        MetricsServer { shard, stopping, data_dir, connections, tls, tls_keys }
    }

    /// Accepts until the shard stops.
    pub(crate) async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        loop {
            let accepted = future::or(async { Some(listener.accept().await) }, async {
                self.stopping.wait().await;
                None
            })
            .await;
            let stream = match accepted {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    tracing::warn!(%error, "metrics accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.try_acquire_static_permit(1) else {
                tracing::debug!("metrics: too many scrapes at once; closing a connection");
                continue;
            };
            let server = Rc::clone(&self);
            glommio::spawn_local(async move {
                if let Err(error) = server.serve(stream).await {
                    tracing::debug!(%error, "metrics connection");
                }
                drop(permit);
            })
            .detach();
        }
    }

    async fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        // The handshake and the request head share one deadline.
        let started = std::time::Instant::now();
        let mut stream = match &self.tls {
            None => Stream::Plain(stream),
            Some(acceptor) => {
                match glommio::timer::timeout(REQUEST_DEADLINE, async { Ok(acceptor.accept(stream).await) }).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(error)) => return Err(error),
                    Err(_) => return Ok(()),
                }
            }
        };
        let left = REQUEST_DEADLINE.saturating_sub(started.elapsed());
        let head = match glommio::timer::timeout(left, async { Ok(read_head(&mut stream).await) }).await {
            Ok(head) => head?,
            Err(_) => return Ok(()),
        };
        let (status, extra, body) = match parse_request(&head) {
            Ok(Route::Metrics { head_only, openmetrics }) => {
                let body = self.render().await;
                let (content_type, body) =
                    if openmetrics { (OPENMETRICS, body) } else { (PROMETHEUS_TEXT, to_prometheus_text(&body)) };
                ("200 OK", format!("Content-Type: {content_type}\r\n"), if head_only { String::new() } else { body })
            }
            Ok(Route::NotFound) => ("404 Not Found", String::new(), "not found: metrics are at /metrics\n".into()),
            Err(problem) => (problem.status(), problem.headers(), format!("{}\n", problem.reason())),
        };
        let mut response =
            format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        response.push_str(&body);
        let write = async {
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await
        };
        match glommio::timer::timeout(RESPONSE_DEADLINE, async { Ok(write.await) }).await {
            Ok(written) => written,
            Err(_) => Ok(()),
        }
    }

    /// Gathers every shard's snapshot and encodes them.
    async fn render(&self) -> String {
        let snapshots = self.shard.snapshot_all().await;
        // statvfs answers from the file system's in-memory counters (a
        // local disk, where the data directory must be) without waiting on
        // the device, so it runs inline rather than on the blocking thread.
        let free = crate::storage::free_bytes(&self.data_dir).ok();
        let mut text = render(snapshots, free);
        if let Some(keys) = &self.tls_keys {
            text = with_tls_reloads(text, keys.reloads());
        }
        text
    }
}

/// Reads a request head: up to the blank line that ends it, at most
/// [`REQUEST_HEAD_BYTES_MAX`] bytes (a longer one is returned as it is and
/// refused by [`parse_request`]).
async fn read_head(stream: &mut Stream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() <= REQUEST_HEAD_BYTES_MAX {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    Ok(head)
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `openmetrics`: the client accepts the OpenMetrics format.
    Metrics {
        head_only: bool,
        openmetrics: bool,
    },
    NotFound,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
enum HttpProblem {
    TooLarge,
    Malformed,
    MethodNotAllowed,
}

impl HttpProblem {
    fn status(&self) -> &'static str {
        match self {
            HttpProblem::TooLarge => "431 Request Header Fields Too Large",
            HttpProblem::Malformed => "400 Bad Request",
            HttpProblem::MethodNotAllowed => "405 Method Not Allowed",
        }
    }

    fn headers(&self) -> String {
        match self {
            HttpProblem::MethodNotAllowed => "Allow: GET, HEAD\r\n".into(),
            _ => String::new(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            HttpProblem::TooLarge => "request head too large",
            HttpProblem::Malformed => "malformed request",
            HttpProblem::MethodNotAllowed => "only GET and HEAD are served",
        }
    }
}

/// Parses a request head (bytes from the network: never panics).
fn parse_request(head: &[u8]) -> Result<Route, HttpProblem> {
    let Some(end) = head.windows(4).position(|window| window == b"\r\n\r\n") else {
        return Err(if head.len() > REQUEST_HEAD_BYTES_MAX { HttpProblem::TooLarge } else { HttpProblem::Malformed });
    };
    if end > REQUEST_HEAD_BYTES_MAX {
        return Err(HttpProblem::TooLarge);
    }
    let text = std::str::from_utf8(&head[..end]).map_err(|_| HttpProblem::Malformed)?;
    let request_line = text.lines().next().ok_or(HttpProblem::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpProblem::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpProblem::Malformed);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(HttpProblem::MethodNotAllowed),
    };
    let path = target.split('?').next().unwrap_or_default();
    let openmetrics = text.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    });
    Ok(if path == "/metrics" { Route::Metrics { head_only, openmetrics } } else { Route::NotFound })
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition written by
/// `render`: counter families are named with their `_total` suffix in
/// `# HELP` and `# TYPE`, and `# EOF` (and `# UNIT`, unused here) go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 32 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Adds the certificate reload counts (SIGHUP) before the exposition's end
/// (`# EOF`, which must stay last).
fn with_tls_reloads(mut text: String, (reloaded, failed): (u64, u64)) -> String {
    let eof = text.rfind("# EOF").unwrap_or(text.len());
    let family = format!(
        "# HELP ringbroker_tls_reloads Certificate reloads on SIGHUP, by result.\n\
         # TYPE ringbroker_tls_reloads counter\n\
         ringbroker_tls_reloads_total{{result=\"ok\"}} {reloaded}\n\
         ringbroker_tls_reloads_total{{result=\"failed\"}} {failed}\n"
    );
    text.insert_str(eof, &family);
    text
}

/// The exposition of a set of snapshots (and the free space of the data
/// directory, when known).
pub fn render(snapshots: Vec<ShardSnapshot>, free_bytes: Option<u64>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition { snapshots, free_bytes }));
    let mut out = String::new();
    // Writing into a String cannot fail; a collector error cannot happen
    // either (it writes into the same String).
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(%error, "encoding metrics");
    }
    out
}

/// The collector: snapshots in, metric families out, at scrape time.
#[derive(Debug)]
struct Exposition {
    snapshots: Vec<ShardSnapshot>,
    free_bytes: Option<u64>,
}

type Labels = Vec<(&'static str, String)>;

/// Which latency histogram of a snapshot a family reports.
type PickLatency = fn(&ShardSnapshot) -> &LatencySnapshot;

/// One metric family: its samples, each with its labels and value.
struct Family<T> {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Labels, T)>,
}

impl<T> Family<T> {
    fn new(name: &'static str, help: &'static str) -> Family<T> {
        Family { name, help, samples: Vec::new() }
    }

    fn add(&mut self, labels: Labels, value: T) {
        self.samples.push((labels, value));
    }
}

fn shard_label(snapshot: &ShardSnapshot) -> Labels {
    vec![("shard", snapshot.shard.0.to_string())]
}

fn encode_counters(encoder: &mut DescriptorEncoder<'_>, family: &Family<u64>) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
    for (labels, value) in &family.samples {
        metric.encode_family(labels)?.encode_counter::<NoLabelSet, u64, u64>(value, None)?;
    }
    Ok(())
}

fn encode_gauges<T: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    family: &Family<T>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
    for (labels, value) in &family.samples {
        if labels.is_empty() {
            metric.encode_gauge(value)?;
        } else {
            metric.encode_family(labels)?.encode_gauge(value)?;
        }
    }
    Ok(())
}

fn encode_histograms(
    encoder: &mut DescriptorEncoder<'_>,
    family: &Family<&LatencySnapshot>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(family.name, family.help, None, MetricType::Histogram)?;
    for (labels, latency) in &family.samples {
        metric.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            latency.sum_seconds,
            latency.count,
            &histogram_buckets(latency),
            None,
        )?;
    }
    Ok(())
}

/// The encoder wants per-bucket counts and adds them up itself; snapshots
/// hold cumulative ones. The last bucket is +Inf.
fn histogram_buckets(latency: &LatencySnapshot) -> Vec<(f64, u64)> {
    let mut buckets = Vec::with_capacity(latency.buckets.len() + 1);
    let mut below = 0;
    for (bound, cumulative) in &latency.buckets {
        buckets.push((*bound, cumulative.saturating_sub(below)));
        below = (*cumulative).max(below);
    }
    buckets.push((f64::MAX, latency.count.saturating_sub(below)));
    buckets
}

/// (counter name in `Counters`, metric name, help, extra labels).
const SHARD_COUNTERS: [(&str, &str, &str); 15] = [
    ("bytes_in", "ringbroker_produced_bytes", "Record batch bytes appended to this shard's partitions."),
    ("events_in", "ringbroker_produced_events", "Events (records) appended to this shard's partitions."),
    ("bytes_out", "ringbroker_fetched_bytes", "Record batch bytes served to consumers by this shard."),
    ("events_out", "ringbroker_fetched_events", "Events (records) served to consumers by this shard."),
    ("connections_accepted", "ringbroker_connections_accepted", "Connections admitted."),
    ("connections_refused", "ringbroker_connections_refused", "Connections refused at admission."),
    ("connections_evicted", "ringbroker_connections_evicted", "Idle connections closed to admit new ones."),
    (
        "tls_handshake_failures",
        "ringbroker_tls_handshake_failures",
        "TLS handshakes that failed or did not finish within the frame deadline.",
    ),
    ("sasl_logins", "ringbroker_sasl_logins", "SASL logins that succeeded."),
    (
        "sasl_failures",
        "ringbroker_sasl_failures",
        "SASL logins that failed: wrong password, unknown user, malformed exchange or unsupported mechanism.",
    ),
    (
        "flushes",
        "ringbroker_log_flushes",
        "Partition log flushes written by this shard (each one durable before its acks).",
    ),
    (
        "fsyncs",
        "ringbroker_fsyncs",
        "fdatasync calls made by this shard's partition logs (none with sync_method dsync).",
    ),
    ("commits", "ringbroker_group_commits", "Durable consumer-group offset commits."),
    ("rebalances", "ringbroker_group_rebalances", "Consumer-group generations started (rebalances) on this shard."),
    ("errors", "ringbroker_request_errors", "Requests or partitions answered with an error."),
];

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.encode_shards(&mut encoder)?;
        self.encode_partitions(&mut encoder)?;
        self.encode_groups(&mut encoder)?;
        if let Some(free) = self.free_bytes {
            let mut family =
                Family::new("ringbroker_storage_free_bytes", "Free space of the data directory's file system.");
            family.add(Vec::new(), free);
            encode_gauges(&mut encoder, &family)?;
        }
        Ok(())
    }
}

impl Exposition {
    fn encode_shards(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (counter, name, help) in SHARD_COUNTERS {
            let mut family = Family::new(name, help);
            for snapshot in &self.snapshots {
                let value = snapshot.counters.iter().find(|(n, _)| *n == counter).map_or(0, |(_, v)| *v);
                family.add(shard_label(snapshot), value);
            }
            encode_counters(encoder, &family)?;
        }
        let mut requests = Family::new("ringbroker_requests", "Requests served, by kind and result code.");
        let mut forwarded = Family::new("ringbroker_forwarded_requests", "Requests forwarded between shards.");
        let mut busy = Family::new("ringbroker_shard_busy_seconds", "Time the shard's executor spent running.");
        let mut write_errors = Family::new("ringbroker_storage_write_errors", "Partition log write or sync failures.");
        let mut deleted = Family::new("ringbroker_retention_deleted_segments", "Segments deleted by retention.");
        let mut open = Family::new("ringbroker_connections_open", "Connections open.");
        let mut inflight = Family::new("ringbroker_inflight_request_bytes", "Request bytes held in memory.");
        let mut inflight_max = Family::new("ringbroker_inflight_request_bytes_limit", "The shard's in-flight budget.");
        for snapshot in &self.snapshots {
            for (kind, code, count) in &snapshot.requests {
                let labels = vec![
                    ("shard", snapshot.shard.0.to_string()),
                    ("kind", kind.to_string()),
                    ("code", code.name().replace(' ', "_")),
                ];
                requests.add(labels, *count);
            }
            let counter = |name: &str| snapshot.counters.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
            for (direction, name) in [("in", "forwarded_in"), ("out", "forwarded_out")] {
                forwarded
                    .add(vec![("shard", snapshot.shard.0.to_string()), ("direction", direction.into())], counter(name));
            }
            busy.add(shard_label(snapshot), snapshot.busy_seconds);
            write_errors.add(shard_label(snapshot), snapshot.write_errors);
            deleted.add(shard_label(snapshot), snapshot.segments_deleted);
            open.add(shard_label(snapshot), counter("connections_open"));
            inflight.add(shard_label(snapshot), snapshot.inflight_bytes);
            inflight_max.add(shard_label(snapshot), snapshot.inflight_bytes_max);
        }
        encode_counters(encoder, &requests)?;
        encode_counters(encoder, &forwarded)?;
        let mut metric = encoder.encode_descriptor(busy.name, busy.help, None, MetricType::Counter)?;
        for (labels, seconds) in &busy.samples {
            metric.encode_family(labels)?.encode_counter::<NoLabelSet, f64, f64>(seconds, None)?;
        }
        encode_counters(encoder, &write_errors)?;
        encode_counters(encoder, &deleted)?;
        encode_gauges(encoder, &open)?;
        encode_gauges(encoder, &inflight)?;
        encode_gauges(encoder, &inflight_max)?;
        let latencies: [(&'static str, &'static str, PickLatency); 6] = [
            (
                "ringbroker_produce_request_latency_seconds",
                "Produce requests with acks, from their first bytes read to their answer written.",
                |s| &s.produce_request_latency,
            ),
            ("ringbroker_produce_latency_seconds", "Produce requests with acks, from decode to answer.", |s| {
                &s.produce_latency
            }),
            ("ringbroker_fsync_latency_seconds", "fdatasync calls of partition logs.", |s| &s.fsync_latency),
            ("ringbroker_log_write_latency_seconds", "O_DIRECT writes of partition log flushes.", |s| &s.write_latency),
            (
                "ringbroker_log_flush_wait_seconds",
                "Partition log flushes' wait before writing, from their first batch being queued.",
                |s| &s.flush_queue_latency,
            ),
            ("ringbroker_commit_latency_seconds", "Durable consumer-group offset commits.", |s| &s.commit_latency),
        ];
        for (name, help, pick) in latencies {
            let mut family = Family::new(name, help);
            for snapshot in &self.snapshots {
                family.add(shard_label(snapshot), pick(snapshot));
            }
            encode_histograms(encoder, &family)?;
        }
        Ok(())
    }

    fn encode_partitions(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut start = Family::new("ringbroker_partition_start_offset", "First offset the partition still holds.");
        let mut end = Family::new("ringbroker_partition_end_offset", "Offset the next append gets.");
        let mut durable =
            Family::new("ringbroker_partition_durable_end_offset", "End of the durable, readable prefix.");
        let mut size = Family::new("ringbroker_partition_size_bytes", "Bytes of the partition's segments.");
        let mut segments = Family::new("ringbroker_partition_segments", "Segment files of the partition.");
        let mut failed = Family::new("ringbroker_partition_failed", "1 if the partition is out of service.");
        for snapshot in &self.snapshots {
            for partition in &snapshot.partitions {
                let labels = || {
                    vec![
                        ("topic", partition.topic.clone()),
                        ("partition", partition.partition.to_string()),
                        ("shard", snapshot.shard.0.to_string()),
                    ]
                };
                start.add(labels(), partition.start.get());
                end.add(labels(), partition.end.get());
                durable.add(labels(), partition.durable_end.get());
                size.add(labels(), partition.size_bytes);
                segments.add(labels(), partition.segments);
                failed.add(labels(), u64::from(partition.failed));
            }
        }
        for family in [&start, &end, &durable, &size, &segments, &failed] {
            encode_gauges(encoder, family)?;
        }
        Ok(())
    }

    fn encode_groups(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let ends: HashMap<(&str, u32), u64> = self
            .snapshots
            .iter()
            .flat_map(|snapshot| &snapshot.partitions)
            .filter(|partition| !partition.failed)
            .map(|partition| ((partition.topic.as_str(), partition.partition), partition.durable_end.get()))
            .collect();
        let mut members = Family::new("ringbroker_group_members", "Members of the consumer group.");
        let mut generation =
            Family::new("ringbroker_group_generation", "The group's generation (bumped by each rebalance).");
        let mut committed = Family::new("ringbroker_group_committed_offset", "The group's committed offset.");
        let mut lag = Family::new(
            "ringbroker_group_lag",
            "Events the group has yet to commit: durable end minus committed offset.",
        );
        for snapshot in &self.snapshots {
            for group in &snapshot.groups {
                let labels = vec![("group", group.group.clone()), ("state", group.state.to_string())];
                members.add(labels, u64::from(group.members));
                generation.add(vec![("group", group.group.clone())], u64::from(group.generation));
                for (topic, partition, offset) in &group.committed {
                    let labels = || {
                        vec![
                            ("group", group.group.clone()),
                            ("topic", topic.clone()),
                            ("partition", partition.to_string()),
                        ]
                    };
                    committed.add(labels(), offset.get());
                    // No lag for an unknown partition, or a committed offset
                    // past the end: a wrong number would hide the problem.
                    if let Some(end) = ends.get(&(topic.as_str(), *partition)).filter(|end| **end >= offset.get()) {
                        lag.add(labels(), end - offset.get());
                    }
                }
            }
        }
        for family in [&members, &generation, &committed, &lag] {
            encode_gauges(encoder, family)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{Offset, ShardId};
    use crate::protocol::wire::ErrorCode;
    use crate::shard::{GroupSnapshot, PartitionSnapshot};

    fn offset(value: u64) -> Offset {
        Offset::new(value).unwrap()
    }

    fn snapshot(shard: u16) -> ShardSnapshot {
        let latency = LatencySnapshot {
            buckets: crate::shard::LATENCY_BUCKETS_SECONDS
                .iter()
                .map(|le| (*le, u64::from(*le >= 0.001) * 3))
                .collect(),
            count: 3,
            sum_seconds: 0.0021,
        };
        ShardSnapshot {
            shard: ShardId(shard),
            counters: vec![("events_in", 100), ("connections_open", 2)],
            requests: vec![("produce", ErrorCode::NONE, 7), ("produce", ErrorCode::STORAGE_FULL, 1)],
            inflight_bytes: 10,
            inflight_bytes_max: 100,
            busy_seconds: 1.5,
            produce_latency: latency.clone(),
            produce_request_latency: latency.clone(),
            fsync_latency: latency.clone(),
            write_latency: latency.clone(),
            flush_queue_latency: LatencySnapshot::default(),
            commit_latency: LatencySnapshot::default(),
            partitions: vec![PartitionSnapshot {
                topic: "orders".into(),
                partition: u32::from(shard),
                start: offset(0),
                end: offset(120),
                durable_end: offset(100),
                size_bytes: 4096,
                segments: 1,
                failed: false,
            }],
            groups: if shard == 0 {
                vec![GroupSnapshot {
                    group: "billing".into(),
                    state: "stable",
                    members: 2,
                    generation: 3,
                    committed: vec![
                        ("orders".into(), 0, offset(60)),
                        ("orders".into(), 1, offset(100)),
                        ("gone".into(), 0, offset(5)),
                    ],
                }]
            } else {
                Vec::new()
            },
            write_errors: 0,
            segments_deleted: 0,
        }
    }

    #[test]
    fn lag_is_the_durable_end_less_the_committed_offset() {
        let text = render(vec![snapshot(0), snapshot(1)], Some(1 << 30));
        assert!(
            text.contains("ringbroker_group_lag{group=\"billing\",topic=\"orders\",partition=\"0\"} 40\n"),
            "{text}"
        );
        assert!(
            text.contains("ringbroker_group_lag{group=\"billing\",topic=\"orders\",partition=\"1\"} 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("ringbroker_group_lag{group=\"billing\",topic=\"gone\""),
            "no lag for a missing partition"
        );
        assert!(text.contains("ringbroker_group_committed_offset{group=\"billing\",topic=\"gone\",partition=\"0\"} 5"));
        assert!(text.contains("ringbroker_requests_total{shard=\"0\",kind=\"produce\",code=\"storage_full\"} 1\n"));
        assert!(
            text.contains("ringbroker_partition_durable_end_offset{topic=\"orders\",partition=\"1\",shard=\"1\"} 100")
        );
        assert!(text.contains("ringbroker_produce_latency_seconds_bucket{le=\"0.001\",shard=\"0\"} 3\n"), "{text}");
        assert!(text.contains("ringbroker_produce_latency_seconds_bucket{le=\"+Inf\",shard=\"0\"} 3\n"), "{text}");
        assert!(text.contains("ringbroker_storage_free_bytes 1073741824\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_classic_text_names_counters_with_total_and_has_no_eof() {
        let text = to_prometheus_text(&render(vec![snapshot(0)], None));
        assert!(text.contains("# TYPE ringbroker_produced_events_total counter\n"), "{text}");
        assert!(text.contains("# HELP ringbroker_produced_events_total "), "{text}");
        assert!(text.contains("# TYPE ringbroker_group_lag gauge\n"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn requests_are_routed_and_bad_ones_refused() {
        let get = |text: &str| parse_request(text.as_bytes());
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Route::Metrics { head_only: false, openmetrics: false })
        );
        assert_eq!(
            get("GET /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0\r\n\r\n"),
            Ok(Route::Metrics { head_only: false, openmetrics: true })
        );
        assert_eq!(get("HEAD /metrics HTTP/1.0\r\n\r\n"), Ok(Route::Metrics { head_only: true, openmetrics: false }));
        assert_eq!(get("GET / HTTP/1.1\r\n\r\n"), Ok(Route::NotFound));
        assert_eq!(get("POST /metrics HTTP/1.1\r\n\r\n"), Err(HttpProblem::MethodNotAllowed));
        assert_eq!(get("GET /metrics\r\n\r\n"), Err(HttpProblem::Malformed));
        assert_eq!(get("GET /metrics SPDY/3\r\n\r\n"), Err(HttpProblem::Malformed));
        assert_eq!(get("GET /metrics HTTP/1.1\r\n"), Err(HttpProblem::Malformed), "no end of head");
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(REQUEST_HEAD_BYTES_MAX));
        assert_eq!(parse_request(huge.as_bytes()), Err(HttpProblem::TooLarge));
        assert_eq!(parse_request(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']), Err(HttpProblem::Malformed));
    }
}
