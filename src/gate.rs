//! The connection limits, per instance and per client IP: a slot is taken before the
//! upgrade and freed when the session ends.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::metrics::Metrics;

pub struct Gate {
    open: AtomicUsize,
    max: usize,
    /// Open connections per IP; an entry exists only while its count is above zero.
    per_ip: DashMap<IpAddr, usize>,
    /// 0 means no per-IP limit.
    max_per_ip: usize,
    metrics: Metrics,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Instance,
    Ip,
}

/// One open connection; dropping it frees the slot.
pub struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Gate {
    pub fn new(max: usize, max_per_ip: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            max,
            per_ip: DashMap::new(),
            max_per_ip,
            metrics,
        })
    }

    /// A slot for a connection from `ip`, or which limit is reached.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .map_err(|_| Full::Instance)?;
        if self.max_per_ip > 0 {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(count);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Full::Ip);
            }
            *count += 1;
        }
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
        Ok(Slot {
            gate: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let gate = &self.gate;
        if gate.max_per_ip > 0 {
            if let Entry::Occupied(mut entry) = gate.per_ip.entry(self.ip) {
                *entry.get_mut() -= 1;
                if *entry.get() == 0 {
                    entry.remove();
                }
            }
        }
        gate.open.fetch_sub(1, Ordering::AcqRel);
        gate.metrics.connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, max_per_ip: usize) -> (Arc<Gate>, Metrics) {
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        (Gate::new(max, max_per_ip, metrics.clone()), metrics)
    }

    #[test]
    fn refuses_past_max_and_frees_on_drop() {
        let (gate, metrics) = gate(2, 0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let one = gate.try_enter(ip).expect("first");
        let _two = gate.try_enter(ip).expect("second");
        assert_eq!(gate.try_enter(ip).err(), Some(Full::Instance));
        drop(one);
        assert!(gate.try_enter(ip).is_ok());
        assert_eq!(metrics.connections_total.get(), 3);
    }

    #[test]
    fn limits_each_ip_separately_and_forgets_idle_ones() {
        let (gate, _) = gate(10, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = gate.try_enter(a).unwrap();
        let _a2 = gate.try_enter(a).unwrap();
        assert_eq!(gate.try_enter(a).err(), Some(Full::Ip));
        let b1 = gate.try_enter(b).unwrap();
        drop(a1);
        assert!(gate.try_enter(a).is_ok(), "freed slot is reusable");
        drop(b1);
        assert!(
            !gate.per_ip.contains_key(&b),
            "no entry kept for an IP with no connections"
        );
        assert_eq!(
            gate.open.load(Ordering::Acquire),
            1,
            "only a2 is still open"
        );
    }
}
