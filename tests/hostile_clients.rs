//! Many idle connections and a flood beyond the connection limit: the
//! broker holds the idle ones within a memory budget, refuses the excess,
//! and keeps serving the clients that do work.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use ringbroker::protocol::wire::{self, FrameKind, Request, Response};
use socket2::{Domain, Socket, Type};
use support::broker::BrokerProcess;
use support::temp_dir;

/// Idle connections held open, spread over source addresses 127.0.0.1-8.
const IDLE_CONNECTIONS: usize = 3000;
/// What one idle connection may cost the broker at most (resident memory).
const BYTES_PER_IDLE_CONNECTION_MAX: u64 = 64 << 10;

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source.into(), 0).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

fn ping(stream: &mut TcpStream, id: u32) -> Response {
    let mut frame = Vec::new();
    wire::encode_frame(&mut frame, FrameKind::Request, id, &Request::Ping, &[]).unwrap();
    stream.write_all(&frame).unwrap();
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).unwrap();
    let mut body = vec![0u8; wire::frame_len(prefix, 1 << 20).unwrap()];
    stream.read_exact(&mut body).unwrap();
    let (head, header, _) = wire::split_frame(bytes::BytesMut::from(&body[..])).unwrap();
    assert_eq!(head.request_id, id);
    wire::decode_header(&header).unwrap()
}

#[test]
fn thousands_of_idle_connections_fit_the_budget_and_a_flood_is_refused() {
    let dir = temp_dir();
    let tuning = dir.path().join("conns.toml");
    std::fs::write(&tuning, "[network]\nmax_connections_per_shard = 2000\nidle_timeout_ms = 600000\n").unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--tuning", tuning.to_str().unwrap()]);
    let mut worker = TcpStream::connect(broker.addr).unwrap();
    worker.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ping(&mut worker, 1), Response::Pong);
    let before = resident_bytes(broker.pid());

    // Idle connections, spread over both shards' own ports and 8 source addresses.
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for i in 0..IDLE_CONNECTIONS {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8);
        let port = broker.shard_ports[i % broker.shard_ports.len()];
        idle.push(connect_from(source, SocketAddr::new(broker.addr.ip(), port)).expect("connecting"));
    }
    // Measure once every shard has accepted them all (the worker's and the
    // stats connections are on top).
    let accepted = |broker: &BrokerProcess| -> u64 {
        (0..broker.shard_ports.len() as u16)
            .map(|shard| broker.shard_counter(broker.addr, shard, "connections_open"))
            .sum()
    };
    broker.wait_until("every idle connection is open", || accepted(&broker) > IDLE_CONNECTIONS as u64);
    assert_eq!(ping(&mut worker, 2), Response::Pong);
    let grown = resident_bytes(broker.pid()).saturating_sub(before);
    println!(
        "{IDLE_CONNECTIONS} idle connections: broker resident memory grew {} KiB ({} bytes per connection)",
        grown / 1024,
        grown / IDLE_CONNECTIONS as u64
    );
    assert!(grown < IDLE_CONNECTIONS as u64 * BYTES_PER_IDLE_CONNECTION_MAX, "grew {grown} bytes");
    for (i, stream) in idle.iter_mut().enumerate().step_by(500) {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(ping(stream, 100 + i as u32), Response::Pong, "idle connection {i} is still served");
    }

    // A flood beyond shard 0's limit (2000; 1500 idle ones are there, too
    // recent to be evicted): the excess is refused (told why while the
    // broker has refusals to spare, else just closed), and the served
    // client does not notice.
    let shard0 = SocketAddr::new(broker.addr.ip(), broker.shard_ports[0]);
    let mut refused = 0;
    let mut flood = Vec::new();
    for i in 0..1000 {
        let source = Ipv4Addr::new(127, 0, 1, 1 + (i % 8) as u8);
        let Ok(mut stream) = connect_from(source, shard0) else {
            refused += 1;
            continue;
        };
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, FrameKind::Request, 7, &Request::Ping, &[]).unwrap();
        let _ = stream.write_all(&frame);
        match support::read_frame(&mut stream) {
            Ok((head, Response::Error(notice))) if head.kind == wire::FrameKind::Notice => {
                assert_eq!(notice.code, wire::ErrorCode::CONNECTION_REFUSED, "{}", notice.message);
                refused += 1;
            }
            Ok((_, Response::Pong)) => {}
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(_) => refused += 1,
        }
        flood.push(stream);
    }
    println!("flood of 1000 beyond the limit: {refused} refused");
    assert!(refused >= 400, "connections over the limit are refused: {refused}");
    assert_eq!(ping(&mut worker, 3), Response::Pong);
    drop(flood);
    drop(idle);
    assert!(broker.terminate().success());
}
