//! Which connections a shard admits: at most `max_connections_per_shard`
//! in all and `max_connections_per_ip` from one address, and when the shard
//! is full, the connection idle the longest (past `evict_idle_after_ms`)
//! makes room for the newcomer instead of the newcomer being turned away.
//! So neither one client nor a crowd of idle sockets can lock everyone else
//! out for the idle timeout.
//!
//! Plain bookkeeping, handed the time: the server asks [`ConnectionTable::admit`]
//! and acts on the answer (closing an evicted connection, answering a
//! refused one with a notice that says why).

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use rustc_hash::FxHashMap;

/// What admission knows about one open connection.
#[derive(Debug)]
pub(crate) struct Presence {
    pub(crate) ip: IpAddr,
    /// When a frame last arrived or a response was last written.
    last_active: Cell<Instant>,
    /// The connection's request slots: one is taken from the moment a frame
    /// starts arriving until its response is written. While any is taken
    /// the connection is not idle.
    requests: Rc<Semaphore>,
    requests_max: u64,
}

impl Presence {
    pub(crate) fn new(ip: IpAddr, now: Instant, requests: Rc<Semaphore>) -> Presence {
        let requests_max = requests.available();
        Presence { ip, last_active: Cell::new(now), requests, requests_max }
    }

    pub(crate) fn touch(&self, now: Instant) {
        self.last_active.set(now);
    }

    /// How long it has been idle; `None` while it has requests.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        let busy = self.requests.available() < self.requests_max;
        (!busy).then(|| now.saturating_duration_since(self.last_active.get()))
    }
}

/// The limits admission applies (from `[network]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdmissionLimits {
    pub(crate) connections_max: usize,
    pub(crate) connections_per_ip_max: usize,
    pub(crate) evict_idle_after: Duration,
}

/// The decision for a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admit,
    /// Admit, once the connection with this id is closed.
    EvictThenAdmit(u64),
    /// Refuse, for this reason (sent to the client).
    Refuse(String),
}

/// The open connections of one shard. Bounded: an entry per admitted
/// connection, and an address entry only while it has connections.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTable {
    next_id: u64,
    open: FxHashMap<u64, Rc<Presence>>,
    per_ip: FxHashMap<IpAddr, usize>,
}

impl ConnectionTable {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// Decides about a connection from `ip`. Looks at every connection
    /// only when the shard is full.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant, limits: AdmissionLimits, shard: u16) -> Admission {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.connections_per_ip_max {
            return Admission::Refuse(format!(
                "too many connections from {ip}: {from_ip} are open to shard {shard} \
                 (network.max_connections_per_ip = {})",
                limits.connections_per_ip_max
            ));
        }
        if self.open.len() < limits.connections_max {
            return Admission::Admit;
        }
        let idlest = self
            .open
            .iter()
            .filter_map(|(id, presence)| Some((presence.idle_for(now)?, *id)))
            .filter(|(idle, _)| *idle >= limits.evict_idle_after)
            .max();
        match idlest {
            Some((_, id)) => Admission::EvictThenAdmit(id),
            None => Admission::Refuse(format!(
                "shard {shard} is full: {} connections are open (network.max_connections_per_shard) \
                 and none has been idle for {} ms (network.evict_idle_after_ms); try again later",
                self.open.len(),
                limits.evict_idle_after.as_millis()
            )),
        }
    }

    /// Records an admitted connection; returns its id.
    pub(crate) fn insert(&mut self, presence: Rc<Presence>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        *self.per_ip.entry(presence.ip).or_default() += 1;
        self.open.insert(id, presence);
        id
    }

    /// Forgets a connection (closed or evicted); a second call is a no-op.
    pub(crate) fn remove(&mut self, id: u64) {
        let Some(presence) = self.open.remove(&id) else { return };
        if let Some(count) = self.per_ip.get_mut(&presence.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&presence.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AdmissionLimits =
        AdmissionLimits { connections_max: 3, connections_per_ip_max: 2, evict_idle_after: Duration::from_secs(10) };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn presence(last: u8, now: Instant) -> Rc<Presence> {
        Rc::new(Presence::new(ip(last), now, Rc::new(Semaphore::new(4))))
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let (mut table, now) = (ConnectionTable::default(), Instant::now());
        for _ in 0..2 {
            assert_eq!(table.admit(ip(1), now, LIMITS, 0), Admission::Admit);
            table.insert(presence(1, now));
        }
        let Admission::Refuse(reason) = table.admit(ip(1), now, LIMITS, 0) else { panic!("a third from one address") };
        assert!(reason.contains("127.0.0.1") && reason.contains("max_connections_per_ip = 2"), "{reason}");
        assert_eq!(table.admit(ip(2), now, LIMITS, 0), Admission::Admit, "another address still gets in");
    }

    #[test]
    fn a_full_shard_evicts_the_longest_idle_connection_past_the_threshold() {
        let (mut table, start) = (ConnectionTable::default(), Instant::now());
        let busy = presence(1, start);
        let _request = busy.requests.try_acquire_static_permit(1).expect("a free slot");
        table.insert(Rc::clone(&busy));
        let older = table.insert(presence(2, start));
        let recent = presence(3, start);
        table.insert(Rc::clone(&recent));
        recent.touch(start + Duration::from_secs(5));
        // Full, and nobody idle for 10 s yet: refused, with the reason.
        let Admission::Refuse(reason) = table.admit(ip(4), start + Duration::from_secs(9), LIMITS, 1) else {
            panic!("nothing is evictable yet")
        };
        assert!(reason.contains("shard 1 is full") && reason.contains("evict_idle_after_ms"), "{reason}");
        // Later the busy one is the longest without activity, but busy: the
        // idle one that has waited longest goes.
        let later = start + Duration::from_secs(60);
        assert_eq!(table.admit(ip(4), later, LIMITS, 1), Admission::EvictThenAdmit(older));
        table.remove(older);
        table.remove(older);
        assert_eq!(table.len(), 2);
        assert_eq!(table.admit(ip(4), later, LIMITS, 1), Admission::Admit);
    }

    #[test]
    fn addresses_are_forgotten_with_their_last_connection() {
        let (mut table, now) = (ConnectionTable::default(), Instant::now());
        let ids: Vec<u64> = (0..2).map(|_| table.insert(presence(9, now))).collect();
        for id in ids {
            table.remove(id);
        }
        assert!(table.per_ip.is_empty() && table.open.is_empty());
    }
}
