//! What the clients of one worker counted, and the latency histogram; mergeable across
//! worker processes, which send theirs as JSON.
//!
//! Latency is kept in microseconds with 3 significant digits from 1 µs to one hour: about
//! 0.1% error at every scale, in a few hundred KiB per worker.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histogram tells apart, in µs; above it values are clamped.
const MAX_US: u64 = 3_600_000_000;

/// Counters since the last report.
pub struct Tally {
    /// Publications delivered (duplicates included).
    pub received: u64,
    /// Publications skipped over, seen as sequence gaps per client and channel.
    pub gaps: u64,
    /// Publications seen again or out of order.
    pub duplicates: u64,
    /// Publications the server said it dropped (Herald `lagged`).
    pub lagged: u64,
    /// Stamps on a channel the client did not subscribe to.
    pub foreign: u64,
    /// Text frames that were not publications of this tool.
    pub other: u64,
    /// Stamps from before the run (a replayed buffer); not counted as deliveries.
    pub stale: u64,
    pub latency: Histogram<u64>,
}

/// A tally on the wire: histogram as (value, count) pairs.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TallyWire {
    pub received: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub lagged: u64,
    pub foreign: u64,
    pub other: u64,
    pub stale: u64,
    pub latency_us: Vec<(u64, u64)>,
}

/// A latency histogram in µs.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant bounds are valid")
}

/// The histogram's recorded buckets, for sending.
pub fn to_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds received buckets into `histogram`.
pub fn add_pairs(histogram: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        histogram.saturating_record_n(value.clamp(1, MAX_US), count);
    }
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            received: 0,
            gaps: 0,
            duplicates: 0,
            lagged: 0,
            foreign: 0,
            other: 0,
            stale: 0,
            latency: histogram(),
        }
    }

    /// One delivery that took `ns` from publisher to client.
    pub fn record_latency_ns(&mut self, ns: u64) {
        self.received += 1;
        self.latency.saturating_record((ns / 1000).clamp(1, MAX_US));
    }

    /// Everything counted so far, leaving the tally empty.
    pub fn take(&mut self) -> TallyWire {
        let wire = TallyWire {
            received: self.received,
            gaps: self.gaps,
            duplicates: self.duplicates,
            lagged: self.lagged,
            foreign: self.foreign,
            other: self.other,
            stale: self.stale,
            latency_us: to_pairs(&self.latency),
        };
        self.received = 0;
        self.gaps = 0;
        self.duplicates = 0;
        self.lagged = 0;
        self.foreign = 0;
        self.other = 0;
        self.stale = 0;
        self.latency.reset();
        wire
    }

    /// Adds another worker's tally.
    pub fn merge(&mut self, wire: &TallyWire) {
        self.received += wire.received;
        self.gaps += wire.gaps;
        self.duplicates += wire.duplicates;
        self.lagged += wire.lagged;
        self.foreign += wire.foreign;
        self.other += wire.other;
        self.stale += wire.stale;
        add_pairs(&mut self.latency, &wire.latency_us);
    }
}

/// The percentiles every report prints, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_counts_and_percentiles() {
        let (mut a, mut b) = (Tally::new(), Tally::new());
        for ms in 1..=50 {
            a.record_latency_ns(ms * 1_000_000);
            b.record_latency_ns((ms + 50) * 1_000_000);
        }
        b.gaps = 3;
        let mut total = Tally::new();
        total.merge(&a.take());
        total.merge(&b.take());
        assert_eq!((total.received, total.gaps), (100, 3));
        let latency = Latency::of(&total.latency);
        assert!((latency.p50_ms - 50.0).abs() < 0.1, "{latency:?}");
        assert!((latency.max_ms - 100.0).abs() < 0.1, "{latency:?}");
        assert_eq!(a.received, 0, "take empties");
        assert!(a.latency.is_empty());
    }
}
