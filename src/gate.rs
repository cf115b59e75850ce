//! The connection limit: a slot is taken before the upgrade and freed when the session ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;

pub struct Gate {
    open: AtomicUsize,
    max: usize,
    metrics: Metrics,
}

/// One open connection; dropping it frees the slot.
pub struct Slot(Arc<Gate>);

impl Gate {
    pub fn new(max: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            max,
            metrics,
        })
    }

    /// A slot, or `None` when `max` connections are open.
    pub fn try_enter(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_max_and_frees_on_drop() {
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let gate = Gate::new(2, metrics.clone());
        let one = gate.try_enter().expect("first");
        let _two = gate.try_enter().expect("second");
        assert!(gate.try_enter().is_none());
        drop(one);
        assert!(gate.try_enter().is_some());
        assert_eq!(metrics.connections_total.get(), 3);
    }
}
