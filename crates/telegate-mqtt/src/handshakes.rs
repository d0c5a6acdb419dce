//! Connections that have not authenticated yet (TLS handshake and CONNECT still to come)
//! have a budget of their own, apart from the vehicles': anyone on the network can open a TCP
//! connection, and without it a few hundred silent ones would keep every vehicle out.
//!
//! The budget never turns a newcomer away, since a vehicle is a newcomer too. It makes room
//! instead: a source address over its share loses its own oldest waiting connection, and a
//! full budget loses the oldest of the source holding the most. A flood thus mostly displaces
//! itself, and a vehicle's handshake, which takes milliseconds, completes long before the
//! many newer arrivals that would displace it.

use crate::Refusal;
use crate::signal::Signal;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The address a budget share belongs to: an IPv4 address, or an IPv6 /64 (one host's
/// usual allocation, so a host cannot take one share per address of its subnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => Source((u128::from(v6) & !u128::from(u64::MAX)) | 1 << 32),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Handshakes {
    max_total: usize,
    max_per_source: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    total: usize,
    /// Per source, its waiting connections, oldest first.
    by_source: HashMap<Source, VecDeque<(u64, Arc<Signal>)>>,
}

/// A connection's place in the budget, given back when it authenticates or ends.
#[derive(Debug)]
pub(crate) struct Pending {
    handshakes: Arc<Handshakes>,
    source: Source,
    id: u64,
}

impl Handshakes {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            waiting: Mutex::new(Waiting::default()),
        }
    }

    /// Takes a place for a new connection from `source`, whose close orders go to `signal`.
    /// When there is no room, the connection that makes room is ordered closed.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr, signal: Arc<Signal>) -> Pending {
        let source = Source::from(source);
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let own = w.by_source.get(&source).map_or(0, VecDeque::len);
        if own >= self.max_per_source {
            w.evict(source, Refusal::TooManyFromSource);
        } else if w.total >= self.max_total
            && let Some(busiest) = w.busiest()
        {
            w.evict(busiest, Refusal::TooManyHandshakes);
        }
        let id = w.next_id;
        w.next_id += 1;
        w.total += 1;
        w.by_source
            .entry(source)
            .or_default()
            .push_back((id, signal));
        Pending {
            handshakes: self.clone(),
            source,
            id,
        }
    }

    /// Orders every waiting connection closed (shutdown).
    pub(crate) fn close_all(&self, why: Refusal) {
        let w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for (_, signal) in w.by_source.values().flatten() {
            signal.close(why);
        }
    }

    /// Connections waiting to authenticate.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Waiting {
    /// The source holding the most waiting connections.
    fn busiest(&self) -> Option<Source> {
        self.by_source
            .iter()
            .max_by_key(|(_, q)| q.len())
            .map(|(s, _)| *s)
    }

    /// Orders the oldest waiting connection of `source` closed and takes it off the books
    /// (its place is free at once, whenever its task gets to end).
    fn evict(&mut self, source: Source, why: Refusal) {
        let Some(queue) = self.by_source.get_mut(&source) else {
            return;
        };
        if let Some((_, signal)) = queue.pop_front() {
            signal.close(why);
            self.total -= 1;
        }
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut w = self
            .handshakes
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(queue) = w.by_source.get_mut(&self.source) else {
            return;
        };
        // Evicted connections are off the books already.
        if let Some(i) = queue.iter().position(|(id, _)| *id == self.id) {
            queue.remove(i);
            let emptied = queue.is_empty();
            w.total -= 1;
            if emptied {
                w.by_source.remove(&self.source);
            }
        }
    }
}

/// The default budget for connections that have not authenticated: a quarter of the
/// process's file-descriptor limit (so that a flood of them leaves the rest to vehicles,
/// Kafka and files), between 16 and 8,192.
pub(crate) fn default_max_handshakes() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(limit / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, 8_192)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn closed(s: &Signal) -> Option<Refusal> {
        s.close_order()
    }

    #[test]
    fn a_source_over_its_share_loses_its_own_oldest() {
        let h = Arc::new(Handshakes::new(100, 2));
        let signals: Vec<Arc<Signal>> = (0..3).map(|_| Arc::default()).collect();
        let vehicle = Arc::<Signal>::default();
        let _v = h.admit(ip(9), vehicle.clone());
        let _held: Vec<Pending> = signals.iter().map(|s| h.admit(ip(1), s.clone())).collect();
        assert_eq!(closed(&signals[0]), Some(Refusal::TooManyFromSource));
        assert_eq!(closed(&signals[1]), None);
        assert_eq!(closed(&signals[2]), None);
        assert_eq!(closed(&vehicle), None, "another source keeps its place");
        assert_eq!(h.waiting(), 3);
    }

    #[test]
    fn a_full_budget_loses_the_oldest_of_the_busiest_source() {
        let h = Arc::new(Handshakes::new(4, 10));
        let vehicle = Arc::<Signal>::default();
        let _v = h.admit(ip(9), vehicle.clone());
        let flood: Vec<Arc<Signal>> = (0..6).map(|_| Arc::default()).collect();
        let _held: Vec<Pending> = flood.iter().map(|s| h.admit(ip(1), s.clone())).collect();
        assert_eq!(h.waiting(), 4);
        assert_eq!(
            closed(&vehicle),
            None,
            "the vehicle came first, yet keeps its place"
        );
        let evicted: Vec<_> = flood.iter().map(|s| closed(s)).collect();
        assert_eq!(
            evicted,
            [
                Some(Refusal::TooManyHandshakes),
                Some(Refusal::TooManyHandshakes),
                Some(Refusal::TooManyHandshakes),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn places_are_given_back_once_whether_evicted_or_not() {
        let h = Arc::new(Handshakes::new(2, 10));
        let a = h.admit(ip(1), Arc::default());
        let b = h.admit(ip(1), Arc::default());
        let c = h.admit(ip(2), Arc::default()); // evicts a
        assert_eq!(h.waiting(), 2);
        drop(a);
        assert_eq!(
            h.waiting(),
            2,
            "an evicted connection was off the books already"
        );
        drop(b);
        drop(c);
        assert_eq!(h.waiting(), 0);
        assert!(h.waiting.lock().expect("lock").by_source.is_empty());
    }

    #[test]
    fn ipv6_hosts_share_by_64_and_mapped_ipv4_is_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("ip");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(Source::from(IpAddr::V6(a)), Source::from(IpAddr::V6(b)));
        assert_ne!(Source::from(IpAddr::V6(a)), Source::from(IpAddr::V6(c)));
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        assert_eq!(Source::from(IpAddr::V6(mapped)), Source::from(ip(1)));
        let v4_looking = Ipv6Addr::from(u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 1))));
        assert_ne!(Source::from(IpAddr::V6(v4_looking)), Source::from(ip(1)));
    }
}
