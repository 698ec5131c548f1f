//! Starts the real `ringbroker` binary on loopback with a temp data dir,
//! for integration tests. Ports are picked by the OS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a `ringbroker serve` started by [`BrokerProcess::start_with`] ended up.
#[derive(Debug)]
pub enum Started {
    Serving(BrokerProcess),
    /// It exited before listening: its status and what it printed on stderr.
    Failed {
        status: ExitStatus,
        stderr: String,
    },
}

/// A running broker process. Killed when dropped.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    /// Where `/metrics` is served (`None`: off).
    pub metrics_addr: Option<SocketAddr>,
    /// The Kafka API's bootstrap address (`None`: off).
    pub kafka_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
}

/// Reads the "ringbroker listening on ..." line.
fn parse_listening(line: &str) -> (SocketAddr, Vec<u16>, Option<SocketAddr>, Option<SocketAddr>) {
    assert!(line.starts_with("ringbroker listening on "), "unexpected first line {line:?}");
    let addr = line.split_whitespace().nth(3).expect("address").parse().expect("a socket address");
    let ports = line.split("shard_ports=[").nth(1).expect("shard ports").trim().trim_end_matches(']');
    let shard_ports = ports.split(',').map(|port| port.trim().parse().expect("a port")).collect();
    let metrics = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("metrics=http://")?.strip_suffix("/metrics")?.parse().ok());
    let kafka = line.split_whitespace().find_map(|field| field.strip_prefix("kafka=")?.parse().ok());
    (addr, shard_ports, metrics, kafka)
}

impl BrokerProcess {
    /// Starts `ringbroker serve` with two shards (CPUs 0 and 1), per-shard
    /// ports, and `extra` arguments, and waits for its "listening" line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringbroker"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--shard-ports", "auto", "--cpus", "0,1", "--log", "warn"])
            .args(["--metrics-listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0", "--kafka-shard-ports", "auto"])
            .arg("--data")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("starting ringbroker");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let started = Instant::now();
        BufReader::new(stdout).read_line(&mut line).expect("reading the broker's first line");
        assert!(!line.is_empty(), "the broker exited before listening (after {:?})", started.elapsed());
        let (addr, shard_ports, metrics_addr, kafka_addr) = parse_listening(&line);
        BrokerProcess { child, addr, shard_ports, metrics_addr, kafka_addr, data_dir: data_dir.to_path_buf() }
    }

    /// Starts `ringbroker serve` with exactly `args` (after `serve` and
    /// `--data`), and waits until it listens or exits. Its stderr goes to
    /// `<data_dir>.stderr`.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> Started {
        let stderr_path = data_dir.with_extension("stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("creating the stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
            .args(["serve", "--log", "warn", "--data"])
            .arg(data_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting ringbroker");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reading the broker's first line");
        if line.is_empty() {
            let status = child.wait().expect("waiting for the broker");
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return Started::Failed { status, stderr };
        }
        let (addr, shard_ports, metrics_addr, kafka_addr) = parse_listening(&line);
        Started::Serving(BrokerProcess {
            child,
            addr,
            shard_ports,
            metrics_addr,
            kafka_addr,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The broker's process id (for reading /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A counter of one shard, asked over a short connection to `via` (pick
    /// a port whose connection count does not matter to the test).
    pub fn shard_counter(&self, via: SocketAddr, shard: u16, name: &str) -> u64 {
        let stats = self.stats(via);
        let shard = stats.shards.iter().find(|s| s.shard.0 == shard).expect("the shard answers");
        shard.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v).expect("the counter exists")
    }

    /// Every shard's stats, asked over a short connection to `via`.
    pub fn stats(&self, via: SocketAddr) -> ringbroker::protocol::wire::StatsResponse {
        use ringbroker::protocol::wire::{self, FrameKind, Request, Response};
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(via).expect("connecting for stats");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, FrameKind::Request, 1, &Request::Stats, &[]).expect("encoding");
        stream.write_all(&frame).expect("sending stats request");
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).expect("stats response");
        let mut body = vec![0u8; wire::frame_len(prefix, 64 << 20).expect("frame length")];
        stream.read_exact(&mut body).expect("stats response");
        let (_, header, _) = wire::split_frame(bytes::BytesMut::from(&body[..])).expect("frame");
        let Ok(Response::Stats(stats)) = wire::decode_header(&header) else { panic!("expected stats") };
        stats
    }

    /// Waits until `condition` holds (the broker acts on its own schedule),
    /// failing after 10 s.
    pub fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait for the graceful exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("sending SIGTERM");
        wait_with_deadline(&mut self.child, Duration::from_secs(30))
    }

    /// SIGKILL: a crash, with no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the broker") {
            return status;
        }
        assert!(started.elapsed() < limit, "the broker did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
