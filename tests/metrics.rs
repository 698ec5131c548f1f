//! Observability against the real binary: `/metrics` checked by
//! `promtool` and scraped by a real Prometheus server, consumer lag in the
//! CLI (`group describe`, `top`), and a flood of bad frames that must not
//! become a flood of log lines.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package,
//! which `.ci/run` installs. Where they are missing the two tests that need
//! them say so and return, unless RB_REQUIRE_PROMETHEUS is set (CI sets it),
//! in which case they fail.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringbroker::protocol::wire::{self, FrameKind, Request};
use support::broker::{BrokerProcess, Started};
use support::temp_dir;

/// `GET path` over HTTP/1.1; the status line's code and the body.
fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String) {
    try_http_get(addr, path, accept).expect("an HTTP response")
}

fn try_http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map_or(String::new(), |accept| format!("Accept: {accept}\r\n"));
    // HTTP/1.0: the answer is never chunked.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string());
    Ok((status, body))
}

/// The sum of a metric family's samples in a text exposition, those whose
/// labels contain `labels` (e.g. `group="g"`).
fn sum_of(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn cli(broker: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", &broker.to_string(), "--log", "warn"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the CLI");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// A topic `t` of two partitions with `produced` events, and a group `g`
/// that has consumed and committed `committed` of them.
fn broker_with_lag(dir: &Path, produced: usize, committed: usize) -> BrokerProcess {
    let broker = BrokerProcess::start(dir, &[]);
    cli(broker.addr, &["topic", "create", "t", "--partitions", "2"], "");
    let events: String = (0..produced).map(|i| format!("k{i}:event-{i}\n")).collect();
    cli(broker.addr, &["produce", "t", "--key-separator", ":"], &events);
    let max = committed.to_string();
    cli(broker.addr, &["consume", "t", "--group", "g", "--max-events", &max], "");
    broker
}

/// The path of a tool from the `prometheus` package, or `None` (with a
/// message) where it is missing and not required.
fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|path| path.is_file()))
        .unwrap_or_default();
    if found.is_none() {
        assert!(std::env::var_os("RB_REQUIRE_PROMETHEUS").is_none(), "{name} is required (RB_REQUIRE_PROMETHEUS)");
        println!("skipped: {name} is not installed (Debian package prometheus)");
    }
    found
}

#[test]
fn promtool_accepts_a_scrape_and_the_numbers_add_up() {
    let dir = temp_dir();
    let broker = broker_with_lag(dir.path(), 50, 20);
    let metrics = broker.metrics_addr.expect("metrics are served");
    let (status, body) = http_get(metrics, "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(sum_of(&body, "ringbroker_produced_events_total", ""), 50.0);
    assert_eq!(sum_of(&body, "ringbroker_group_lag", "group=\"g\""), 30.0);
    assert_eq!(sum_of(&body, "ringbroker_group_committed_offset", "group=\"g\""), 20.0);
    assert_eq!(sum_of(&body, "ringbroker_partition_durable_end_offset", "topic=\"t\""), 50.0);
    assert!(sum_of(&body, "ringbroker_requests_total", "kind=\"produce\",code=\"none\"") >= 1.0);
    // Timed from their first bytes read to their answer written (recorded
    // once the answer is out, so the last one may not be in yet).
    assert!(sum_of(&body, "ringbroker_produce_request_latency_seconds_count", "") >= 1.0);
    // The flush stages: every flush waited (at least briefly), wrote and,
    // with the default sync method, called fdatasync once.
    let flushes = sum_of(&body, "ringbroker_log_flushes_total", "");
    assert!(flushes >= 1.0);
    assert_eq!(sum_of(&body, "ringbroker_log_write_latency_seconds_count", ""), flushes);
    assert!(sum_of(&body, "ringbroker_log_flush_wait_seconds_count", "") >= 1.0);
    assert_eq!(sum_of(&body, "ringbroker_fsync_latency_seconds_count", ""), flushes);
    assert_eq!(sum_of(&body, "ringbroker_fsyncs_total", ""), flushes);
    // Busy time is a counter: it only grows between scrapes.
    let busy = sum_of(&body, "ringbroker_shard_busy_seconds_total", "");
    let (_, later) = http_get(metrics, "/metrics", None);
    assert!(busy > 0.0 && sum_of(&later, "ringbroker_shard_busy_seconds_total", "") >= busy, "{busy}");
    // Prometheus itself asks for OpenMetrics, and gets it.
    let (_, openmetrics) = http_get(metrics, "/metrics", Some("application/openmetrics-text;version=1.0.0"));
    assert!(openmetrics.ends_with("# EOF\n") && !body.contains("# EOF"));
    assert_eq!(http_get(metrics, "/nothing", None).0, 404);

    if let Some(promtool) = prometheus_tool("promtool") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let checked = check.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
        assert!(checked.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
    }
    assert!(broker.terminate().success());
}

/// A Prometheus server scraping `target`, stopped when dropped.
struct Prometheus {
    child: Child,
    api: SocketAddr,
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, target: SocketAddr) -> Prometheus {
        let api =
            SocketAddr::from(([127, 0, 0, 1], TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\nscrape_configs:\n  - job_name: ringbroker\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={api}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, api }
    }

    /// The value of an instant query with one result (`None`: no result yet).
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (byte as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        // Refused while Prometheus is still starting.
        let (status, body) = try_http_get(self.api, &format!("/api/v1/query?query={encoded}"), None).ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"].get(0)?["value"].get(1)?.as_str()?.parse().ok()
    }

    /// Waits until `promql` answers `expected`, failing after 30 s.
    fn wait_for(&self, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(promql);
            if last == Some(expected) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus answered {last:?} to {promql}, not {expected}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_broker_and_answers_for_events_and_lag() {
    let Some(binary) = prometheus_tool("prometheus") else { return };
    let dir = temp_dir();
    let broker = broker_with_lag(&dir.path().join("broker"), 40, 15);
    let prometheus = Prometheus::start(&binary, dir.path(), broker.metrics_addr.expect("metrics are served"));
    prometheus.wait_for("sum(ringbroker_produced_events_total)", 40.0);
    // lag = produced - consumed and committed.
    prometheus.wait_for("sum(ringbroker_group_lag{group=\"g\"})", 25.0);
    // More load while it scrapes, then the consumer catches up and commits.
    let more: String = (40..100).map(|i| format!("k{i}:event-{i}\n")).collect();
    cli(broker.addr, &["produce", "t", "--key-separator", ":"], &more);
    prometheus.wait_for("sum(ringbroker_produced_events_total)", 100.0);
    prometheus.wait_for("sum(ringbroker_group_lag{group=\"g\"})", 85.0);
    cli(broker.addr, &["consume", "t", "--group", "g", "--idle-exit-ms", "500"], "");
    prometheus.wait_for("sum(ringbroker_group_lag{group=\"g\"})", 0.0);
    prometheus.wait_for("sum(ringbroker_group_committed_offset{group=\"g\"})", 100.0);
    drop(prometheus);
    assert!(broker.terminate().success());
}

#[test]
fn the_cli_shows_lag_in_group_describe_and_top() {
    let dir = temp_dir();
    let broker = broker_with_lag(dir.path(), 30, 12);
    let described = String::from_utf8(cli(broker.addr, &["group", "describe", "g"], "").stdout).unwrap();
    assert!(described.contains("total lag: 18"), "{described}");
    let top = cli(broker.addr, &["top", "--iterations", "2", "--interval-ms", "200"], "");
    let shown = String::from_utf8(top.stdout).unwrap();
    assert_eq!(shown.matches("ringbroker top:").count(), 2, "two frames: {shown}");
    assert!(!shown.contains('\u{1b}'), "no escape codes when stdout is not a terminal");
    let group_line = shown.lines().rev().find(|line| line.starts_with("g ")).expect("the group's line");
    assert_eq!(group_line.split_whitespace().collect::<Vec<_>>(), ["g", "empty", "0", "18"], "{shown}");
    assert!(shown.lines().any(|line| line.starts_with("0 ") || line.starts_with("0\t")), "shard 0: {shown}");
    assert!(broker.terminate().success());
}

#[test]
fn a_flood_of_malformed_frames_logs_a_bounded_number_of_lines() {
    let dir = temp_dir();
    let listen = format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let args = ["--listen", listen.as_str(), "--shard-ports", "none", "--cpus", "0", "--metrics-listen", "127.0.0.1:0"];
    let data = dir.path().join("data");
    let Started::Serving(broker) = BrokerProcess::start_with(&data, &args) else { panic!("the broker starts") };
    let mut flood = TcpStream::connect(broker.addr).unwrap();
    let mut frames = Vec::new();
    for id in 0..2000u32 {
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, FrameKind::Request, id, &Request::Ping, &[]).unwrap();
        let header_at = 4 + wire::FRAME_HEAD_BYTES;
        frame[header_at] = 0xEE;
        frames.extend_from_slice(&frame);
    }
    flood.write_all(&frames).unwrap();
    // Every one is answered (the connection carries on after each).
    flood.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..2000 {
        support::read_frame(&mut flood).expect("an error response");
    }
    drop(flood);
    assert!(broker.terminate().success());
    let log = std::fs::read_to_string(data.with_extension("stderr")).unwrap();
    let warned = log.lines().filter(|line| line.contains("malformed request")).count();
    println!("2000 malformed frames: {warned} log lines");
    assert!((1..=10).contains(&warned), "{warned} lines: {log}");
}

#[test]
fn the_grafana_dashboards_queries_are_valid_promql_over_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("docs/grafana-dashboard.json").unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    // Every metric a query names is one the broker exports.
    let dir = temp_dir();
    let broker = broker_with_lag(dir.path(), 5, 2);
    let (_, body) = http_get(broker.metrics_addr.unwrap(), "/metrics", None);
    for expr in &exprs {
        for name in
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("ringbroker_"))
        {
            assert!(body.contains(&format!("\n{name}")), "{name} (in {expr}) is not exported");
        }
    }
    assert!(broker.terminate().success());
    let Some(promtool) = prometheus_tool("promtool") else { return };
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(index, expr)| {
            format!("      - record: dashboard:query_{index}\n        expr: '{}'\n", expr.replace('\'', "''"))
        })
        .collect();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, format!("groups:\n  - name: dashboard\n    rules:\n{rules}")).unwrap();
    let checked = Command::new(promtool).args(["check", "rules"]).arg(&file).output().unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout) + String::from_utf8_lossy(&checked.stderr)
    );
}
