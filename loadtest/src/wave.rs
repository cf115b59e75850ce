//! The reconnect wave of the `resume` scenario: when each client drops its connection, and
//! what the workers count while their clients come back (mergeable across processes).
//!
//! Client `i` of `N` drops at `start + spread × i / N`: uniform over the spread, the same
//! rule in every worker, on the one clock the processes share (ns since the UNIX epoch).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::tally::{self, Latency};

/// The worker command that starts a wave: `resume START_NS SPREAD_NS CLIENTS`.
pub const COMMAND: &str = "resume";

/// What the coordinator tells every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wave {
    /// When client 0 drops, ns since the UNIX epoch.
    pub start_ns: u64,
    /// The drops are spread uniformly over this long.
    pub spread_ns: u64,
    /// Every client of the run, over all workers.
    pub clients: u32,
}

impl Wave {
    pub fn command(&self) -> String {
        format!(
            "{COMMAND} {} {} {}",
            self.start_ns, self.spread_ns, self.clients
        )
    }

    /// Reads a line written by [`Wave::command`].
    pub fn parse(line: &str) -> Option<Wave> {
        let mut words = line.split_whitespace();
        (words.next()? == COMMAND).then_some(())?;
        let mut number = || words.next()?.parse::<u64>().ok();
        let wave = Wave {
            start_ns: number()?,
            spread_ns: number()?,
            clients: u32::try_from(number()?).ok()?,
        };
        words.next().is_none().then_some(wave)
    }

    /// When client `index` drops its connection, ns since the UNIX epoch.
    pub fn turn_ns(&self, index: u32) -> u64 {
        let share = self.spread_ns as u128 * index as u128 / self.clients.max(1) as u128;
        self.start_ns + share as u64
    }
}

/// What one worker's clients did in the wave.
pub struct WaveTally {
    /// Clients that dropped their connection.
    pub dropped: u32,
    /// Clients whose new connection had its subscribe answered with `ok`.
    pub rejoined: u32,
    /// Clients that could not come back, by why (connect error, HTTP status, an `error`
    /// reply's code, timeout, the connection ending before it caught up).
    pub failed: BTreeMap<String, u64>,
    /// Channels the `ok` reported `recovered: true`.
    pub recovered: u64,
    /// Channels reported `recovered: false`.
    pub not_recovered: u64,
    /// Channels named in `since` that the `ok` did not report on (no `recovered` at all,
    /// or the name missing from it).
    pub unanswered: u64,
    /// Channels subscribed again without `since`: no offset had arrived on them.
    pub without_offset: u64,
    /// Deliveries lost (sequence gaps) after the `ok`, on channels reported
    /// `recovered: true`: the contract promises none. After `false` they are expected.
    pub lost_recovered: u64,
    pub lost_not_recovered: u64,
    /// Deliveries repeated after the `ok` on channels reported `recovered: true`.
    pub duplicated_recovered: u64,
    /// Of `lost_recovered`, what Herald said it dropped for a slow client (`lagged`).
    pub lagged_recovered: u64,
    /// Per channel told `recovered: false`: publications skipped before the first one
    /// after the `ok` (at least 1 recorded). Below the history's SIZE would be suspect.
    pub skipped_not_recovered: Histogram<u64>,
    /// Clients back on the live stream: a publication stamped after they sent their
    /// subscribe has arrived, so every earlier one arrived or was counted lost.
    pub caught_up: u32,
    /// When the last of them caught up, ns since the UNIX epoch.
    pub last_caught_up_ns: u64,
    /// Clients that have neither caught up nor failed; the wave is over at 0.
    pub waiting: u32,
    /// Per client, µs: from dropping to the new connection's `welcome`.
    pub reconnect: Histogram<u64>,
    /// Per client, µs: from sending subscribe to its `ok`.
    pub answer: Histogram<u64>,
    /// Per client, µs: from dropping to caught up.
    pub back_live: Histogram<u64>,
}

/// A wave tally on the wire: histograms as (value, count) pairs.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WaveWire {
    pub dropped: u32,
    pub rejoined: u32,
    pub failed: BTreeMap<String, u64>,
    pub recovered: u64,
    pub not_recovered: u64,
    pub unanswered: u64,
    pub without_offset: u64,
    #[serde(default)]
    pub lost_recovered: u64,
    #[serde(default)]
    pub lost_not_recovered: u64,
    #[serde(default)]
    pub duplicated_recovered: u64,
    #[serde(default)]
    pub lagged_recovered: u64,
    #[serde(default)]
    pub skipped_not_recovered: Vec<(u64, u64)>,
    pub caught_up: u32,
    pub last_caught_up_ns: u64,
    pub reconnect_us: Vec<(u64, u64)>,
    pub answer_us: Vec<(u64, u64)>,
    pub back_live_us: Vec<(u64, u64)>,
}

impl WaveTally {
    /// A wave in which `live` clients are to come back.
    pub fn new(live: u32) -> WaveTally {
        WaveTally {
            dropped: 0,
            rejoined: 0,
            failed: BTreeMap::new(),
            recovered: 0,
            not_recovered: 0,
            unanswered: 0,
            without_offset: 0,
            lost_recovered: 0,
            lost_not_recovered: 0,
            duplicated_recovered: 0,
            lagged_recovered: 0,
            skipped_not_recovered: tally::histogram(),
            caught_up: 0,
            last_caught_up_ns: 0,
            waiting: live,
            reconnect: tally::histogram(),
            answer: tally::histogram(),
            back_live: tally::histogram(),
        }
    }

    /// A client caught up at `now` (ns), having dropped at `dropped` (ns).
    pub fn caught_up(&mut self, now: u64, dropped: u64) {
        self.caught_up += 1;
        self.last_caught_up_ns = self.last_caught_up_ns.max(now);
        record_ns(&mut self.back_live, now.saturating_sub(dropped));
        self.waiting = self.waiting.saturating_sub(1);
    }

    /// The lost count for channels with this `recovered` verdict.
    pub fn lost_by(&mut self, recovered: bool) -> &mut u64 {
        if recovered {
            &mut self.lost_recovered
        } else {
            &mut self.lost_not_recovered
        }
    }

    /// A client will not catch up, for `why`.
    pub fn failed(&mut self, why: String) {
        *self.failed.entry(why).or_default() += 1;
        self.waiting = self.waiting.saturating_sub(1);
    }

    pub fn wire(&self) -> WaveWire {
        WaveWire {
            dropped: self.dropped,
            rejoined: self.rejoined,
            failed: self.failed.clone(),
            recovered: self.recovered,
            not_recovered: self.not_recovered,
            unanswered: self.unanswered,
            without_offset: self.without_offset,
            lost_recovered: self.lost_recovered,
            lost_not_recovered: self.lost_not_recovered,
            duplicated_recovered: self.duplicated_recovered,
            lagged_recovered: self.lagged_recovered,
            skipped_not_recovered: tally::to_pairs(&self.skipped_not_recovered),
            caught_up: self.caught_up,
            last_caught_up_ns: self.last_caught_up_ns,
            reconnect_us: tally::to_pairs(&self.reconnect),
            answer_us: tally::to_pairs(&self.answer),
            back_live_us: tally::to_pairs(&self.back_live),
        }
    }
}

/// Records a duration given in ns into a µs histogram.
pub fn record_ns(histogram: &mut Histogram<u64>, ns: u64) {
    histogram.saturating_record((ns / 1000).max(1));
}

/// Smallest, median and largest of a count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub min: u64,
    pub median: u64,
    pub max: u64,
}

/// Every worker's wave, merged: what the coordinator reports.
#[derive(Debug, Clone, Serialize)]
pub struct WaveSummary {
    pub dropped: u32,
    pub rejoined: u32,
    pub failed: BTreeMap<String, u64>,
    pub recovered: u64,
    pub not_recovered: u64,
    pub unanswered: u64,
    pub without_offset: u64,
    /// Lost and duplicated after `recovered: true` (broken promises), lost after `false`.
    pub lost_recovered: u64,
    pub duplicated_recovered: u64,
    /// Of `lost_recovered`, dropped for a slow client and reported (`lagged`).
    pub lagged_recovered: u64,
    pub lost_not_recovered: u64,
    /// Per `false` channel, publications skipped at the seam: min, median, max.
    pub skipped_not_recovered: Option<Spread>,
    pub caught_up: u32,
    #[serde(skip)]
    pub last_caught_up_ns: u64,
    /// Drop to `welcome` of the new connection, per client.
    pub reconnect_ms: Latency,
    /// Subscribe with `since` to its `ok`, per client.
    pub answer_ms: Latency,
    /// Drop to caught up, per client.
    pub back_live_ms: Latency,
}

impl WaveSummary {
    pub fn merge(wires: &[WaveWire]) -> WaveSummary {
        let (mut reconnect, mut answer, mut back_live) =
            (tally::histogram(), tally::histogram(), tally::histogram());
        let mut failed = BTreeMap::new();
        let mut skipped = tally::histogram();
        for w in wires {
            tally::add_pairs(&mut skipped, &w.skipped_not_recovered);
            tally::add_pairs(&mut reconnect, &w.reconnect_us);
            tally::add_pairs(&mut answer, &w.answer_us);
            tally::add_pairs(&mut back_live, &w.back_live_us);
            for (why, n) in &w.failed {
                *failed.entry(why.clone()).or_default() += n;
            }
        }
        let sum = |f: fn(&WaveWire) -> u64| wires.iter().map(f).sum::<u64>();
        WaveSummary {
            dropped: sum(|w| w.dropped.into()) as u32,
            rejoined: sum(|w| w.rejoined.into()) as u32,
            failed,
            recovered: sum(|w| w.recovered),
            not_recovered: sum(|w| w.not_recovered),
            unanswered: sum(|w| w.unanswered),
            without_offset: sum(|w| w.without_offset),
            lost_recovered: sum(|w| w.lost_recovered),
            duplicated_recovered: sum(|w| w.duplicated_recovered),
            lagged_recovered: sum(|w| w.lagged_recovered),
            lost_not_recovered: sum(|w| w.lost_not_recovered),
            skipped_not_recovered: (!skipped.is_empty()).then(|| Spread {
                min: skipped.min(),
                median: skipped.value_at_quantile(0.5),
                max: skipped.max(),
            }),
            caught_up: sum(|w| w.caught_up.into()) as u32,
            last_caught_up_ns: wires.iter().map(|w| w.last_caught_up_ns).max().unwrap_or(0),
            reconnect_ms: Latency::of(&reconnect),
            answer_ms: Latency::of(&answer),
            back_live_ms: Latency::of(&back_live),
        }
    }

    /// Clients that could not come back.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_round_trips() {
        let wave = Wave {
            start_ns: 1_764_318_000_123_456_789,
            spread_ns: 1_000_000_000,
            clients: 5000,
        };
        assert_eq!(Wave::parse(&wave.command()), Some(wave));
        assert_eq!(Wave::parse("resume 1 2"), None);
        assert_eq!(Wave::parse("resume 1 2 3 4"), None);
        assert_eq!(Wave::parse("report"), None);
        assert_eq!(Wave::parse("resume 1 2 99999999999"), None);
    }

    #[test]
    fn turns_are_spread_uniformly_over_every_client() {
        let wave = Wave {
            start_ns: 1_000,
            spread_ns: 1_000_000_000,
            clients: 4,
        };
        let turns: Vec<u64> = (0..4).map(|i| wave.turn_ns(i)).collect();
        assert_eq!(
            turns,
            vec![1_000, 250_001_000, 500_001_000, 750_001_000],
            "the last turn is within the spread"
        );
        let none = Wave { clients: 0, ..wave };
        assert_eq!(none.turn_ns(0), 1_000);
    }

    #[test]
    fn tallies_merge_and_the_wave_ends_when_nobody_waits() {
        let mut a = WaveTally::new(2);
        a.dropped = 2;
        a.rejoined = 2;
        a.recovered = 2;
        a.caught_up(5_000_000, 1_000_000);
        assert_eq!(a.waiting, 1);
        a.failed("timeout".into());
        assert_eq!(a.waiting, 0);
        let mut b = WaveTally::new(1);
        b.dropped = 1;
        b.not_recovered = 1;
        b.caught_up(9_000_000, 1_000_000);
        let merged = WaveSummary::merge(&[a.wire(), b.wire()]);
        assert_eq!(
            (merged.dropped, merged.caught_up, merged.failed_total()),
            (3, 2, 1)
        );
        assert_eq!((merged.recovered, merged.not_recovered), (2, 1));
        assert_eq!(merged.last_caught_up_ns, 9_000_000);
        assert!(
            (merged.back_live_ms.max_ms - 8.0).abs() < 0.01,
            "{merged:?}"
        );
    }
}
