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

/// Binds `addr` without SO_REUSEPORT and lets it go: `InUse` if anything
/// listens on it. SO_REUSEADDR only lets the probe ignore connections of an
/// earlier broker still in TIME_WAIT; on Linux it never allows binding a
/// port that has a listener.
fn probe(addr: SocketAddr) -> Result<(), AddressError> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(|error| AddressError::Bind { addr, error })?;
    socket.set_reuse_address(true).map_err(|error| AddressError::Bind { addr, error })?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => Err(AddressError::InUse { addr }),
        Err(error) => Err(AddressError::Bind { addr, error }),
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
    fn port_zero_needs_no_claim() {
        claim(&[SocketAddr::from(([127, 0, 0, 1], 0))]).unwrap();
    }
}
