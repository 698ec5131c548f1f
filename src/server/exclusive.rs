//! One broker per address: a start-up check that no other process listens
//! on the ports this broker is about to bind.
//!
//! glommio binds every listener with SO_REUSEPORT, which is how a broker's
//! shards share one port. The kernel lets any other SO_REUSEPORT socket of
//! the same user join that group, so a second `ringbroker serve` on the same
//! address would silently take a share of the connections (and acknowledge
//! events into its own data directory). Before binding, the broker therefore
//! binds each address once more *without* SO_REUSEPORT (a probe): that bind
//! fails while anything listens on the port, and succeeds otherwise. It is
//! released at once and the shards bind for real.
//!
//! Two brokers starting at the same moment could both pass their probes
//! before either binds. A lock per port closes that window: an abstract Unix
//! socket named after the port (`\0ringbroker/port/<port>`), which only one
//! process can hold and which the kernel releases when the process dies
//! (even by `kill -9`), so no stale lock survives. Abstract sockets live in
//! the network namespace, exactly like the ports they guard. Locks are taken
//! in port order (so two brokers never wait on each other crosswise), held
//! from the probes until every shard has bound, then released.

use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{self, UnixListener};
use std::time::{Duration, Instant};

/// How long to wait for another broker that is starting on the same port
/// (binding takes milliseconds; this only guards against a stuck start).
const LOCK_WAIT_MAX: Duration = Duration::from_secs(10);
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(5);
/// How long a probe waits for a connection to a port that a bind found
/// taken (a listener on this machine answers at once).
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a listen address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(
        "address {addr} is already in use by another process (another ringbroker serving it?): \
         refusing to share it, since clients would be split between the two"
    )]
    InUse { addr: SocketAddr },
    #[error("cannot bind {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error("another ringbroker has been starting on port {port} for {seconds} s; try again")]
    LockTimeout { port: u16, seconds: u64 },
    #[error("locking port {port}: {error}")]
    Lock { port: u16, error: io::Error },
}

/// Held while the broker's shards bind: no other broker starts on these
/// ports meanwhile.
#[derive(Debug)]
pub struct PortClaims {
    _locks: Vec<UnixListener>,
}

/// Locks the ports of `addrs` (port 0, "any free port", needs no lock) and
/// checks that nothing listens on any of the addresses.
pub fn claim(addrs: &[SocketAddr]) -> Result<PortClaims, AddressError> {
    let mut ports: Vec<u16> = addrs.iter().map(SocketAddr::port).filter(|port| *port != 0).collect();
    ports.sort_unstable();
    ports.dedup();
    let mut locks = Vec::with_capacity(ports.len());
    for port in ports {
        locks.push(lock_port(port)?);
    }
    for addr in addrs.iter().filter(|addr| addr.port() != 0) {
        probe(*addr)?;
    }
    Ok(PortClaims { _locks: locks })
}

/// Claims `addr` if it is free: `None` if anything listens on it (the
/// caller then picks another), an error only if it cannot be checked.
pub fn claim_if_free(addr: SocketAddr) -> Result<Option<PortClaims>, AddressError> {
    match claim(&[addr]) {
        Ok(claims) => Ok(Some(claims)),
        Err(AddressError::InUse { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// [`claim_if_free`] for several addresses at once: all or none.
pub fn claim_if_free_all(addrs: &[SocketAddr]) -> Result<Option<PortClaims>, AddressError> {
    match claim(addrs) {
        Ok(claims) => Ok(Some(claims)),
        Err(AddressError::InUse { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Binds `addr` without SO_REUSEPORT and lets it go: `InUse` if anything
/// listens on it.
///
/// The bind also fails over connections of an earlier broker on the port
/// still in TIME_WAIT (their sockets carry SO_REUSEPORT, not SO_REUSEADDR,
/// so SO_REUSEADDR on the probe does not help), which would keep a broker
/// from restarting for a minute. So a failed bind is checked by connecting:
/// only a listener accepts, and the port counts as in use only then.
fn probe(addr: SocketAddr) -> Result<(), AddressError> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(|error| AddressError::Bind { addr, error })?;
    socket.set_reuse_address(true).map_err(|error| AddressError::Bind { addr, error })?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => match has_listener(addr) {
            true => Err(AddressError::InUse { addr }),
            false => Ok(()),
        },
        Err(error) => Err(AddressError::Bind { addr, error }),
    }
}

/// Whether something accepts connections on `addr` (a wildcard address is
/// tried on loopback).
fn has_listener(addr: SocketAddr) -> bool {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    // Refused: nothing listens. Any other failure (a timeout, say) is
    // treated as a listener: refusing to start is the safe mistake.
    match std::net::TcpStream::connect_timeout(&target, PROBE_CONNECT_TIMEOUT) {
        Ok(_) => true,
        Err(error) => error.kind() != io::ErrorKind::ConnectionRefused,
    }
}

/// Takes the start-up lock of `port`, waiting for a broker that holds it.
fn lock_port(port: u16) -> Result<UnixListener, AddressError> {
    let name = format!("ringbroker/port/{port}");
    let address =
        net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(|error| AddressError::Lock { port, error })?;
    let started = Instant::now();
    loop {
        match UnixListener::bind_addr(&address) {
            Ok(lock) => return Ok(lock),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                if started.elapsed() >= LOCK_WAIT_MAX {
                    return Err(AddressError::LockTimeout { port, seconds: LOCK_WAIT_MAX.as_secs() });
                }
                std::thread::sleep(LOCK_RETRY_EVERY);
            }
            Err(error) => return Err(AddressError::Lock { port, error }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_with_a_listener_is_refused_and_a_free_one_is_claimed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = listener.local_addr().unwrap();
        let refused = claim(&[taken]).unwrap_err();
        assert!(matches!(refused, AddressError::InUse { addr } if addr == taken), "{refused}");
        assert!(refused.to_string().contains(&taken.to_string()), "{refused}");
        drop(listener);
        claim(&[taken]).unwrap();
    }

    #[test]
    fn a_wildcard_listener_blocks_a_specific_address_on_its_port() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let specific = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(matches!(claim(&[specific]), Err(AddressError::InUse { .. })));
    }

    #[test]
    fn port_locks_exclude_each_other_until_released() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let first = lock_port(free.port()).unwrap();
        let name = format!("ringbroker/port/{}", free.port());
        let address = net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        assert_eq!(UnixListener::bind_addr(&address).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(first);
        drop(lock_port(free.port()).unwrap());
    }

    #[test]
    fn connections_left_in_time_wait_do_not_count_as_a_listener() {
        // A listener with SO_REUSEPORT (as glommio binds), one connection
        // closed by the server side first, so its socket lingers in
        // TIME_WAIT on the listening port; then the listener goes.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        socket.listen(8).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (served, _) = listener.accept().unwrap();
        drop(served);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut client, &mut rest);
        drop(client);
        drop(listener);
        claim(&[addr]).expect("a port with only TIME_WAIT connections is free");
    }

    #[test]
    fn port_zero_needs_no_claim() {
        claim(&[SocketAddr::from(([127, 0, 0, 1], 0))]).unwrap();
    }
}
