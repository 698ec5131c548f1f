//! The report: what a run measured, as a table on stdout, a JSON document,
//! `.hgrm` percentile files and (in `svg.rs`) a picture.
//!
//! Everything is derived from one [`Report`] value, built once from the
//! merged measurements, so the table, the JSON and the picture can never
//! disagree. Percentiles are read from merged HdrHistograms; latencies are
//! recorded in microseconds and shown in milliseconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use hdrhistogram::Histogram;
use ringbroker::protocol::types::AckLevel;
use serde::{Deserialize, Serialize};

use crate::cpustat::ThreadCpu;
use crate::scenario::{BrokerStats, Environment, Outcome, Settings};

/// Bytes in the MB of MB/s (decimal, as disks and networks are rated).
const BYTES_PER_MB: f64 = 1e6;

/// The time series table prints every second up to this many rows, then
/// every k-th second; the JSON always has all of them.
const TABLE_ROWS_MAX: usize = 60;

/// Percentiles of one latency quantity, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    /// `None` for an empty histogram.
    pub fn of(hist: &Histogram<u64>) -> Option<Percentiles> {
        if hist.is_empty() {
            return None;
        }
        let at = |quantile| hist.value_at_quantile(quantile);
        Some(Percentiles {
            count: hist.len(),
            mean_us: hist.mean(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p99_9_us: at(0.999),
            p99_99_us: at(0.9999),
            max_us: hist.max(),
        })
    }
}

/// Event counts: every event is accounted for.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub planned: u64,
    /// Handed to the producer.
    pub produced: u64,
    pub acknowledged: u64,
    /// Sent with acks = none: never confirmed either way.
    pub unconfirmed: u64,
    /// The broker or the connection reported a failure.
    pub failed: u64,
    /// Distinct events consumed.
    pub consumed: u64,
    /// Acknowledged but never consumed: lost.
    pub missing: u64,
    pub duplicated: u64,
    /// Consumed records that are not events of this run.
    pub foreign: u64,
    /// Consumed after a later event of their producer in their partition.
    pub reordered: u64,
    pub partitions_not_caught_up: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Start to last ack.
    pub produce_s: Option<f64>,
    pub produce_events_per_s: Option<f64>,
    pub produce_mb_per_s: Option<f64>,
    /// Start to every partition consumed to its end.
    pub consume_s: Option<f64>,
    pub consume_events_per_s: Option<f64>,
    pub consume_mb_per_s: Option<f64>,
    /// Last ack to consumers caught up.
    pub drain_after_last_ack_s: Option<f64>,
}

/// One consumer group of a fanout or pipeline run.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub label: String,
    pub group: String,
    pub topic: String,
    /// "fanout", "relay" (a pipeline stage forwarding to `forwards_to`) or
    /// "last" (the pipeline's last stage).
    pub role: &'static str,
    pub forwards_to: Option<String>,
    pub members: usize,
    /// Distinct events consumed.
    pub consumed: u64,
    /// Acknowledged by the producer, never consumed by this group.
    pub missing: u64,
    pub duplicated: u64,
    pub foreign: u64,
    pub reordered: u64,
    /// Relays: events forwarded and acknowledged.
    pub forwarded: Option<u64>,
    /// Assignment changes and rejoins while measuring.
    pub rebalances: u64,
    pub commit_failures: u64,
    /// This group or one it reads from rebalanced: its duplicates are
    /// at-least-once redelivery, not a fault.
    pub rebalanced: bool,
    /// Start to the group's topic consumed to its end.
    pub caught_up_s: Option<f64>,
    pub events_per_s: Option<f64>,
    pub mb_per_s: Option<f64>,
    /// From the send time in each event (the original one, in a pipeline)
    /// to this group's member holding it.
    pub e2e: Option<Percentiles>,
    pub members_not_caught_up: u32,
}

impl GroupReport {
    /// Duplicates no rebalance explains.
    fn unexplained_duplicates(&self) -> u64 {
        if self.rebalanced {
            0
        } else {
            self.duplicated
        }
    }
}

/// One second of the time series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesRow {
    pub second: usize,
    pub sent: u64,
    pub acked: u64,
    pub consumed: u64,
    pub ack_p99_us: Option<u64>,
    pub lag: Option<u64>,
}

/// Everything the outputs are made of.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub environment: Environment,
    pub config: Settings,
    pub totals: Totals,
    pub throughput: Throughput,
    /// `ack` and its parts (`ack_to_seal`, `ack_dispatch`,
    /// `ack_round_trip`, `ack_delivery`), `e2e` and (open loop) `send_delay`.
    pub latency: BTreeMap<&'static str, Percentiles>,
    pub cpu: Vec<ThreadCpu>,
    /// An embedded broker's shards: each one's busy share of its core
    /// (100 = fully busy), from `cpu`; `None` for a remote broker.
    pub shard_busy_percent: Option<Vec<f64>>,
    /// The broker's counters (growth during the run) and latencies.
    pub broker: Option<BrokerStats>,
    /// fanout and pipeline: each consumer group. The totals' consumed,
    /// missing and duplicated counts then sum the groups at the end of the
    /// flow (every fanout group; a pipeline's last stage).
    pub groups: Vec<GroupReport>,
    pub series: Vec<SeriesRow>,
    pub errors: Vec<String>,
    pub wall_s: f64,
}

/// The names of the latency quantities, in display order, with labels.
pub const QUANTITIES: [(&str, &str); 7] = [
    ("ack", "producer ack"),
    ("ack_to_seal", "  send to batch sealed"),
    ("ack_dispatch", "  sealed to request sent"),
    ("ack_round_trip", "  request to answer"),
    ("ack_delivery", "  answer to ack counted"),
    ("e2e", "end-to-end"),
    ("send_delay", "send delay (actual - intended)"),
];

/// The histogram behind each quantity.
pub fn histograms(outcome: &Outcome) -> [(&'static str, &Histogram<u64>); 7] {
    let measured = &outcome.measurements;
    [
        ("ack", &measured.ack),
        ("ack_to_seal", &measured.ack_to_seal),
        ("ack_dispatch", &measured.ack_dispatch),
        ("ack_round_trip", &measured.ack_round_trip),
        ("ack_delivery", &measured.ack_delivery),
        ("e2e", &measured.e2e),
        ("send_delay", &measured.send_delay),
    ]
}

impl Report {
    pub fn build(outcome: &Outcome) -> Report {
        let measured = &outcome.measurements;
        let tracker = &measured.tracker;
        let groups = group_reports(outcome);
        let mut totals = Totals {
            planned: outcome.planned_events,
            produced: measured.sent,
            acknowledged: measured.acked_count,
            unconfirmed: measured.unconfirmed,
            failed: measured.failed,
            consumed: tracker.unique(),
            missing: measured.missing(),
            duplicated: tracker.duplicates(),
            foreign: tracker.foreign(),
            reordered: measured.reordered,
            partitions_not_caught_up: measured.partitions_not_caught_up,
        };
        if !groups.is_empty() {
            let ends = || groups.iter().filter(|group| group.role != "relay");
            totals.consumed = ends().map(|group| group.consumed).sum();
            totals.missing = ends().map(|group| group.missing).sum();
            totals.duplicated = ends().map(|group| group.duplicated).sum();
            totals.foreign = ends().map(|group| group.foreign).sum();
            totals.reordered = ends().map(|group| group.reordered).sum();
        }
        let bytes = outcome.settings.event_bytes as f64;
        let rate = |events: u64, seconds: Option<f64>| seconds.filter(|s| *s > 0.0).map(|s| events as f64 / s);
        // With acks = none nothing is acknowledged: production is timed by
        // what was handed over.
        let produced = if outcome.settings.acks == AckLevel::None { totals.produced } else { totals.acknowledged };
        let produce_events_per_s = rate(produced, outcome.produce_s());
        let consume_events_per_s = rate(totals.consumed, outcome.consume_s());
        let throughput = Throughput {
            produce_s: outcome.produce_s(),
            produce_events_per_s,
            produce_mb_per_s: produce_events_per_s.map(|events| events * bytes / BYTES_PER_MB),
            consume_s: outcome.consume_s(),
            consume_events_per_s,
            consume_mb_per_s: consume_events_per_s.map(|events| events * bytes / BYTES_PER_MB),
            drain_after_last_ack_s: outcome.drain_s(),
        };
        let latency =
            histograms(outcome).into_iter().filter_map(|(name, hist)| Some((name, Percentiles::of(hist)?))).collect();
        let series = measured
            .series
            .seconds()
            .iter()
            .enumerate()
            .map(|(second, sample)| SeriesRow {
                second,
                sent: sample.sent,
                acked: sample.acked,
                consumed: sample.consumed,
                ack_p99_us: sample.ack_latency.as_ref().map(|hist| hist.value_at_quantile(0.99)),
                lag: sample.lag,
            })
            .collect();
        Report {
            scenario: outcome.settings.scenario.name(),
            environment: outcome.environment.clone(),
            config: outcome.settings.clone(),
            totals,
            throughput,
            latency,
            cpu: outcome.cpu.clone(),
            shard_busy_percent: outcome
                .environment
                .broker
                .cpus
                .as_ref()
                .map(|cpus| shard_busy(&outcome.cpu, cpus.len())),
            broker: outcome.broker_stats.clone(),
            groups,
            series,
            errors: measured.errors.clone(),
            wall_s: outcome.end_ns.saturating_sub(outcome.start_ns) as f64 / 1e9,
        }
    }

    /// 0: all good; 2: acknowledged events went missing; 3: duplicated or
    /// foreign events; 1: the run itself failed (errors, consumers that
    /// never caught up).
    ///
    /// With consumer groups, every group counts: one missing event in any
    /// group is a failure. Duplicates are one only where no rebalance
    /// explains them (a partition's new owner re-reads from the last
    /// commit: at-least-once delivery).
    pub fn exit_code(&self) -> i32 {
        let totals = &self.totals;
        let groups = &self.groups;
        let duplicated = if groups.is_empty() {
            totals.duplicated
        } else {
            groups.iter().map(GroupReport::unexplained_duplicates).sum()
        };
        let foreign = totals.foreign + groups.iter().map(|group| group.foreign).sum::<u64>();
        if totals.missing > 0 || groups.iter().any(|group| group.missing > 0) {
            2
        } else if duplicated > 0 || foreign > 0 {
            3
        } else if !self.errors.is_empty() || totals.partitions_not_caught_up > 0 || totals.failed > 0 {
            1
        } else {
            0
        }
    }

    /// The human-readable report.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(self.header().as_bytes())?;
        out.write_all(self.totals_table().as_bytes())?;
        out.write_all(self.groups_table().as_bytes())?;
        out.write_all(self.latency_table().as_bytes())?;
        out.write_all(self.cpu_line().as_bytes())?;
        out.write_all(self.broker_line().as_bytes())?;
        out.write_all(self.series_table().as_bytes())?;
        out.write_all(self.verdict().as_bytes())
    }

    fn header(&self) -> String {
        let env = &self.environment;
        let config = &self.config;
        let mut text = format!("\nringbroker loadgen: {}  ({})\n", self.scenario, env.date_utc);
        let _ = writeln!(
            text,
            "machine   {} CPUs online, this process may use {}",
            env.machine_cpus,
            ringbroker::config::format_cpu_list(&env.allowed_cpus)
        );
        let broker_cpus = env.broker.cpus.as_ref().map_or("unknown (remote)".to_string(), |cpus| format!("{cpus:?}"));
        let _ = writeln!(text, "broker    {} at {}, shard CPUs {}", env.broker.mode, env.broker.addr, broker_cpus);
        let protocol = match (config.protocol, env.broker.kafka) {
            (crate::link::Protocol::Kafka, Some(kafka)) => {
                let mode = env.broker.kafka_mode.map_or(String::new(), |mode| format!(", {mode} mode"));
                format!("kafka (loadgen's Kafka client), bootstrap {kafka}{mode}")
            }
            (protocol, _) => protocol.name().to_string(),
        };
        let _ = writeln!(text, "protocol  {protocol}");
        if let Some(tuning) = &env.broker.tuning {
            let _ = writeln!(text, "tuning    {tuning}");
        }
        let _ = writeln!(text, "loadgen   executors pinned to CPUs {:?}", env.loadgen_cpus);
        let consumer_rate = config.consumer_rate.map_or("unthrottled".into(), |rate| format!("{rate} events/s"));
        let pace = match config.rate {
            0 => "as fast as acked".to_string(),
            rate => format!("open loop at {rate} events/s"),
        };
        let load = match config.scenario {
            crate::scenario::Scenario::Burst => format!("{} events as fast as acked", config.events),
            crate::scenario::Scenario::Steady => {
                format!("open loop {} events/s for {} s", config.rate, config.duration_s)
            }
            crate::scenario::Scenario::Peaks => format!(
                "open loop, peaks {} events/s for {} s, valleys {} events/s for {} s, {} s in all",
                config.rate, config.peak_s, config.valley_rate, config.valley_s, config.duration_s
            ),
            crate::scenario::Scenario::Fanout => {
                format!("{} events {pace}, each to {} consumer groups", config.events, self.groups.len())
            }
            crate::scenario::Scenario::Pipeline => format!(
                "{} events {pace} through {} stages (forwarded with acks {:?}, committed after the ack)",
                config.events,
                self.groups.len(),
                config.acks
            ),
        };
        let stem = self.topic_stem();
        let topics = match self.groups.last() {
            Some(last) if last.topic != env.topic => format!("topics {} .. {}", env.topic, &last.topic[stem..]),
            _ => format!("topic {}", env.topic),
        };
        let _ = writeln!(text, "load      {load}, {} B each, {topics}", config.event_bytes);
        let consumers = if self.groups.is_empty() {
            format!("{} consumers over {} partitions ({consumer_rate})", config.consumers, config.partitions)
        } else {
            let plural = if config.consumers == 1 { "" } else { "s" };
            format!("{} member{plural} per group, {} partitions per topic", config.consumers, config.partitions)
        };
        let _ = writeln!(
            text,
            "clients   {} producers (acks {:?}, batch {} B, linger {} ms, {} in flight, compression {}{}), {consumers}\n",
            config.producers,
            config.acks,
            config.batch_bytes,
            config.linger_ms,
            config.max_in_flight,
            config.compression.name(),
            if config.idempotent { ", idempotent" } else { ", not idempotent" },
        );
        if !config.topic_configs.is_empty() {
            let configs: Vec<String> =
                config.topic_configs.iter().map(|(key, value)| format!("{key}={value}")).collect();
            let _ = writeln!(text, "topics    {}\n", configs.join(", "));
        }
        text
    }

    fn totals_table(&self) -> String {
        let totals = &self.totals;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "events    planned {}  produced {}  acknowledged {}  consumed {}  missing {}  duplicated {}{}{}{}{}",
            totals.planned,
            totals.produced,
            totals.acknowledged,
            totals.consumed,
            totals.missing,
            totals.duplicated,
            optional_count("  unconfirmed (acks none)", totals.unconfirmed),
            optional_count("  failed", totals.failed),
            optional_count("  foreign", totals.foreign),
            optional_count("  reordered", totals.reordered),
        );
        let throughput = &self.throughput;
        let _ = writeln!(
            text,
            "produce   {}",
            rate_line(throughput.produce_events_per_s, throughput.produce_mb_per_s, throughput.produce_s, "last ack")
        );
        let end_groups = self.groups.iter().filter(|group| group.role != "relay").count();
        let _ = writeln!(
            text,
            "consume   {}{}",
            rate_line(throughput.consume_events_per_s, throughput.consume_mb_per_s, throughput.consume_s, "caught up"),
            if end_groups > 1 { format!(", all {end_groups} groups together") } else { String::new() }
        );
        let drain =
            throughput.drain_after_last_ack_s.map_or("never (see errors)".into(), |s| format!("{:.1} ms", s * 1e3));
        let _ = writeln!(text, "drain     consumers caught up {drain} after the last ack\n");
        text
    }

    /// Bytes at the start of every group's topic name that they share (the
    /// run's name, up to the dash before "stage-"): the table shows the rest.
    fn topic_stem(&self) -> usize {
        let Some(first) = self.groups.first() else { return 0 };
        let common = self.groups.iter().fold(first.topic.len(), |common, group| {
            first.topic.bytes().zip(group.topic.bytes()).take(common).take_while(|(a, b)| a == b).count()
        });
        // Keep the last word of the shared part: "stage-0", not "0".
        let shared = &first.topic[..first.topic[..common].rfind('-').unwrap_or(0)];
        shared.rfind('-').map_or(0, |dash| dash + 1)
    }

    /// Per consumer group: what it consumed, how fast, and whether it got
    /// everything.
    fn groups_table(&self) -> String {
        if self.groups.is_empty() {
            return String::new();
        }
        // Fanout groups all read the topic in the header.
        let one_topic = self.groups.iter().all(|group| group.topic == self.environment.topic);
        let stem = self.topic_stem();
        let mut text = format!(
            "{:<10} {:<7} {:>7} {:>10} {:>8} {:>10} {:>10} {:>10} {:>12} {:>11}{}\n",
            "group",
            "role",
            "members",
            "consumed",
            "missing",
            "duplicated",
            "forwarded",
            "rebalances",
            "caught up s",
            "events/s",
            if one_topic { "" } else { "  topic" }
        );
        for group in &self.groups {
            let forwarded = group.forwarded.map_or("-".into(), |count| count.to_string());
            let caught_up = group.caught_up_s.map_or("never".into(), |s| format!("{s:.2}"));
            let rate = group.events_per_s.map_or("-".into(), |rate| format!("{rate:.0}"));
            let topic = match &group.forwards_to {
                _ if one_topic => String::new(),
                Some(next) => format!("{} -> {}", &group.topic[stem..], next.get(stem..).unwrap_or(next)),
                None => group.topic[stem..].to_string(),
            };
            let line = format!(
                "{:<10} {:<7} {:>7} {:>10} {:>8} {:>10} {forwarded:>10} {:>10} {caught_up:>12} {rate:>11}  {topic}",
                group.label,
                group.role,
                group.members,
                group.consumed,
                group.missing,
                group.duplicated,
                group.rebalances
            );
            let _ = writeln!(text, "{}", line.trim_end());
        }
        text.push('\n');
        text
    }

    fn latency_table(&self) -> String {
        let mut text = format!(
            "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "count"
        );
        for (name, label) in QUANTITIES {
            if let Some(p) = self.latency.get(name) {
                latency_row(&mut text, label, p);
            }
        }
        for group in &self.groups {
            if let Some(p) = &group.e2e {
                latency_row(&mut text, &format!("  end-to-end, {}", group.label), p);
            }
        }
        text.push('\n');
        text
    }

    fn cpu_line(&self) -> String {
        if self.cpu.is_empty() {
            return String::new();
        }
        let threads: Vec<String> =
            self.cpu.iter().map(|thread| format!("{} {:.0}%", thread.name, thread.busy_percent)).collect();
        format!("cpu       busy share of one core over {:.1} s: {}\n\n", self.wall_s, threads.join(", "))
    }

    /// What the broker did, from its counters: batching and group commit
    /// explain most throughput and latency numbers.
    fn broker_line(&self) -> String {
        let Some(BrokerStats { counters, shards }) = &self.broker else {
            return String::new();
        };
        let count = |name: &str| counters.get(name).copied().unwrap_or(0);
        let produces = count("produce_requests");
        let per_request = if produces == 0 { 0.0 } else { count("events_in") as f64 / produces as f64 };
        let (flushes, fsyncs) = (count("flushes"), count("fsyncs"));
        let mut text = format!(
            "broker    {produces} produce requests ({per_request:.0} events each), {} fetches, {flushes} durable flushes ({:.0}/s, {fsyncs} fsyncs), {} forwarded between shards\n",
            count("fetch_requests"),
            flushes as f64 / self.wall_s.max(1e-9),
            count("forwarded_out"),
        );
        for (shard, latencies) in shards.iter().enumerate() {
            // A produce request's whole time in the broker, from decode
            // to answer, then the flush stages it waits for.
            let rows = [
                ("request", &latencies.request_us),
                ("produce", &latencies.produce_us),
                ("wait", &latencies.flush_wait_us),
                ("write", &latencies.write_us),
                ("fsync", &latencies.fsync_us),
            ];
            for (name, percentiles) in rows {
                if percentiles.is_empty() {
                    continue;
                }
                let shown: Vec<String> =
                    percentiles.iter().map(|(percentile, us)| format!("p{percentile} {:.3}", ms(*us))).collect();
                let _ = writeln!(text, "          shard {shard} {name:<7} ms: {}", shown.join(", "));
            }
        }
        text.push('\n');
        text
    }

    fn series_table(&self) -> String {
        let mut text = format!(
            "{:>6} {:>11} {:>11} {:>11} {:>12} {:>11}\n",
            "second", "sent/s", "acked/s", "consumed/s", "p99 ack ms", "lag"
        );
        let step = self.series.len().div_ceil(TABLE_ROWS_MAX).max(1);
        if step > 1 {
            let _ = writeln!(text, "(every {step}th second; all of them are in the JSON report)");
        }
        for row in self.series.iter().step_by(step) {
            let p99 = row.ack_p99_us.map_or("-".into(), |us| format!("{:.3}", ms(us)));
            let lag = row.lag.map_or("-".into(), |lag| lag.to_string());
            let _ = writeln!(
                text,
                "{:>6} {:>11} {:>11} {:>11} {:>12} {:>11}",
                row.second, row.sent, row.acked, row.consumed, p99, lag
            );
        }
        text.push('\n');
        text
    }

    fn verdict(&self) -> String {
        let mut text = String::new();
        for error in &self.errors {
            let _ = writeln!(text, "error     {error}");
        }
        if self.totals.reordered > 0 {
            let _ = writeln!(
                text,
                "warning   {} events reached their partition out of send order (the producer sends each \
                 partition's records in order)",
                self.totals.reordered
            );
        }
        let redelivered: u64 = self.groups.iter().filter(|group| group.rebalanced).map(|group| group.duplicated).sum();
        if redelivered > 0 {
            let _ = writeln!(
                text,
                "warning   {redelivered} events delivered twice after rebalances (at-least-once: a partition's \
                 new owner re-reads from the last commit)"
            );
        }
        let verdict = match self.exit_code() {
            0 if !self.groups.is_empty() && redelivered > 0 => {
                "ok: every acknowledged event reached every consumer group (some twice, after rebalances)"
            }
            0 if !self.groups.is_empty() => "ok: every acknowledged event reached every consumer group exactly once",
            0 => "ok: every acknowledged event was consumed exactly once",
            2 => "FAILED: acknowledged events are missing",
            3 => "FAILED: events were delivered twice or are not from this run",
            _ => "FAILED: the run did not complete (see errors)",
        };
        let _ = writeln!(text, "result    {verdict}");
        text
    }

    /// Writes the JSON report.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer_pretty(file, self).map_err(io::Error::other)
    }
}

/// Each shard's busy percent, from the threads' CPU use: the broker names
/// shard i's thread `shard-<i>` and glommio appends `-<executor id>`. A
/// shard under 1% busy is not in the list and counts as 0.
fn shard_busy(cpu: &[ThreadCpu], shards: usize) -> Vec<f64> {
    (0..shards)
        .map(|shard| {
            cpu.iter().filter(|thread| is_shard_thread(&thread.name, shard)).map(|thread| thread.busy_percent).sum()
        })
        .collect()
}

/// Whether a thread is one of shard `shard`'s: glommio names the executor
/// thread (and its helper threads) `shard-<shard>-<executor id>`.
pub fn is_shard_thread(name: &str, shard: usize) -> bool {
    name.strip_prefix("shard-")
        .and_then(|rest| rest.strip_prefix(shard.to_string().as_str()))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// The groups' part of the report.
fn group_reports(outcome: &Outcome) -> Vec<GroupReport> {
    let measured = &outcome.measurements;
    let seconds = |at: Option<u64>| at.map(|at| at.saturating_sub(outcome.start_ns) as f64 / 1e9);
    let mut reports: Vec<GroupReport> = Vec::new();
    for (plan, group) in outcome.groups.iter().zip(&measured.groups) {
        let consumed = group.tracker.unique();
        let caught_up_s = if group.members_not_caught_up > 0 { None } else { seconds(group.caught_up_ns) };
        let events_per_s = caught_up_s.filter(|s| *s > 0.0).map(|s| consumed as f64 / s);
        let rebalanced = group.rebalances > 0 || plan.upstream.is_some_and(|upstream| reports[upstream].rebalanced);
        reports.push(GroupReport {
            label: plan.label.clone(),
            group: plan.name.clone(),
            topic: plan.topic.clone(),
            role: plan.role.name(),
            forwards_to: match &plan.role {
                crate::worker::GroupRole::Relay(next) => Some(next.clone()),
                _ => None,
            },
            members: plan.members.len(),
            consumed,
            missing: measured.missing_from(&group.tracker),
            duplicated: group.tracker.duplicates(),
            foreign: group.tracker.foreign(),
            reordered: group.reordered,
            forwarded: (!plan.role.is_end()).then_some(group.forwarded),
            rebalances: group.rebalances,
            commit_failures: group.commit_failures,
            rebalanced,
            caught_up_s,
            events_per_s,
            mb_per_s: events_per_s.map(|events| events * outcome.settings.event_bytes as f64 / BYTES_PER_MB),
            e2e: Percentiles::of(&group.e2e),
            members_not_caught_up: group.members_not_caught_up,
        });
    }
    reports
}

fn latency_row(text: &mut String, label: &str, p: &Percentiles) {
    let _ = writeln!(
        text,
        "{label:<32} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10}",
        ms(p.p50_us),
        ms(p.p90_us),
        ms(p.p99_us),
        ms(p.p99_9_us),
        ms(p.p99_99_us),
        ms(p.max_us),
        p.mean_us / 1e3,
        p.count
    );
}

fn optional_count(label: &str, count: u64) -> String {
    if count == 0 {
        String::new()
    } else {
        format!("{label} {count}")
    }
}

fn rate_line(events_per_s: Option<f64>, mb_per_s: Option<f64>, seconds: Option<f64>, until: &str) -> String {
    match (events_per_s, mb_per_s, seconds) {
        (Some(events), Some(mb), Some(seconds)) => {
            format!("{events:>12.0} events/s {mb:>9.1} MB/s   ({until} at {seconds:.2} s)")
        }
        _ => "n/a".into(),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// Microseconds per displayed unit in `.hgrm` files (milliseconds, as the
/// HdrHistogram tools show them).
const HGRM_SCALING: f64 = 1000.0;

/// The standard HdrHistogram percentile distribution text (what
/// `outputPercentileDistribution` writes and the HdrHistogram plotter
/// reads), values in milliseconds, five ticks per half distance.
pub fn hgrm(hist: &Histogram<u64>) -> String {
    let digits = usize::from(hist.sigfig());
    let mut text = format!("{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    for step in hist.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / HGRM_SCALING;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let _ = writeln!(text, "{value:>12.digits$} {quantile:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - quantile));
        } else {
            let _ = writeln!(text, "{value:>12.digits$} {quantile:>2.12} {total:>10}");
        }
    }
    let _ = writeln!(
        text,
        "#[Mean    = {:>12.digits$}, StdDeviation   = {:>12.digits$}]",
        hist.mean() / HGRM_SCALING,
        hist.stdev() / HGRM_SCALING
    );
    let _ = writeln!(
        text,
        "#[Max     = {:>12.digits$}, Total count    = {:>12}]",
        hist.max() as f64 / HGRM_SCALING,
        hist.len()
    );
    let sub_buckets = (2 * 10u64.pow(u32::from(hist.sigfig()))).next_power_of_two();
    let _ = writeln!(text, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", hist.buckets(), sub_buckets);
    text
}

/// Writes `<dir>/<quantity>.hgrm` for every non-empty quantity, and
/// `e2e-group-<k>.hgrm` / `e2e-stage-<i>.hgrm` per consumer group; returns
/// the files written.
pub fn write_hgrm_files(outcome: &Outcome, dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let groups = outcome
        .groups
        .iter()
        .zip(&outcome.measurements.groups)
        .map(|(plan, group)| (format!("e2e-{}", plan.label.replace(' ', "-")), &group.e2e));
    let quantities = histograms(outcome).into_iter().map(|(name, hist)| (name.to_string(), hist));
    for (name, hist) in quantities.chain(groups) {
        if hist.is_empty() {
            continue;
        }
        let path = dir.join(format!("{name}.hgrm"));
        std::fs::write(&path, hgrm(hist))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency_histogram;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut hist = latency_histogram();
        for value in 1..=10_000 {
            hist.record(value).unwrap();
        }
        let p = Percentiles::of(&hist).unwrap();
        assert_eq!(p.count, 10_000);
        assert!((4995..=5005).contains(&p.p50_us), "{}", p.p50_us);
        assert!((9985..=9995).contains(&p.p99_9_us), "{}", p.p99_9_us);
        assert_eq!(p.max_us, hist.max());
        assert!((p.mean_us - 5000.5).abs() < 5.0);
        assert_eq!(Percentiles::of(&latency_histogram()), None);
    }

    #[test]
    fn shard_busy_comes_from_the_shard_threads() {
        let thread = |name: &str, busy_percent| ThreadCpu { tid: 1, name: name.into(), busy_percent };
        let cpu = [
            thread("shard-1-3", 80.0),
            thread("loadgen-0-4", 50.0),
            thread("shard-10-12", 9.0),
            thread("shard-0-2", 70.0),
        ];
        // Shard 2 used under 1% (not listed); shard 10 is not shard 1.
        assert_eq!(shard_busy(&cpu, 3), [70.0, 80.0, 0.0]);
    }

    #[test]
    fn hgrm_files_have_the_standard_shape() {
        let mut hist = latency_histogram();
        // Below 2048 us every microsecond has its own bucket: exact values.
        for value in 1..=1000 {
            hist.record(value).unwrap();
        }
        let text = hgrm(&hist);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines[1], "");
        // First row: the minimum (1 us = 0.001 ms) at percentile 0.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first, ["0.001", "0.000000000000", "1", "1.00"]);
        // The last data row reaches percentile 1 with every sample counted
        // and has no 1/(1-p) column.
        let last_row = lines.iter().rev().find(|line| !line.starts_with('#')).unwrap();
        let last: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(last, ["1.000", "1.000000000000", "1000"]);
        // Rows are in order, and the counts add up.
        let counts: Vec<u64> = lines[2..]
            .iter()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|pair| pair[0] <= pair[1]));
        assert!(text.contains("#[Max     =        1.000, Total count    =         1000]"), "{text}");
        assert!(text.contains("#[Buckets =           22, SubBuckets     =         2048]"), "{text}");
    }
}
