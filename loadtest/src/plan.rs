//! What a worker process is told: which clients it runs, on which channels, against what.
//!
//! Sent once, as the first line on the worker's stdin. The layout is a rule, not a list,
//! so a plan for 20,000 clients stays a few hundred bytes.

use std::net::Ipv4Addr;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::peer::Peer;

/// How clients map to channels. Channel `i` is named `prefix + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Every client on channel 0.
    OneChannel,
    /// Client `i` on channel `i` (its own) and on channel `clients` (shared by all).
    OwnPlusShared { clients: u32 },
    /// Client `i` on channel `i mod channels`.
    Spread { channels: u32 },
    /// Every client on every channel (`api_publish`: a few subscribers see every
    /// publication of every publishing connection).
    Every { channels: u32 },
}

impl Layout {
    /// The channels client `client` subscribes to.
    pub fn channels_of(self, client: u32) -> Vec<u32> {
        match self {
            Layout::OneChannel => vec![0],
            Layout::OwnPlusShared { clients } => vec![client, clients],
            Layout::Spread { channels } => vec![client % channels.max(1)],
            Layout::Every { channels } => (0..channels.max(1)).collect(),
        }
    }

    /// How many channels the layout uses (they are numbered from 0).
    pub fn channel_count(self) -> u32 {
        match self {
            Layout::OneChannel => 1,
            Layout::OwnPlusShared { clients } => clients + 1,
            Layout::Spread { channels } | Layout::Every { channels } => channels.max(1),
        }
    }

    /// Subscribers per channel, counting only the clients for which `connected` is true.
    pub fn audience(self, clients: u32, connected: impl Fn(u32) -> bool) -> Vec<u64> {
        let mut counts = vec![0u64; self.channel_count() as usize];
        for client in (0..clients).filter(|&c| connected(c)) {
            for channel in self.channels_of(client) {
                counts[channel as usize] += 1;
            }
        }
        counts
    }
}

/// The name of channel `index` as clients see it.
pub fn channel_name(prefix: &str, index: u32) -> String {
    format!("{prefix}{index}")
}

/// One worker's assignment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub peer: Peer,
    pub layout: Layout,
    pub channel_prefix: String,
    pub token: Option<String>,
    /// Global client indices this worker runs.
    pub clients: Range<u32>,
    /// Client `i` connects from `source_addrs[i % len]`; empty = the kernel chooses.
    pub source_addrs: Vec<Ipv4Addr>,
    /// Connection attempts this worker keeps in flight at once.
    pub connect_concurrency: usize,
    pub connect_timeout_ms: u64,
    /// Stamps older than this (ns since the epoch) were published before the run started
    /// (Nchan replays its buffer to new subscribers) and count as stale, not delivered.
    pub not_before_ns: u64,
    /// The worker exits by itself after this long even if the coordinator never says so.
    pub lifetime_ms: u64,
    /// Clients take part in a reconnect wave when the coordinator starts one (`resume`),
    /// coming back to this server (the same as `peer`, or another instance).
    #[serde(default)]
    pub rejoin: Option<Peer>,
}

/// Splits `0..clients` into `workers` contiguous, near-equal slices.
pub fn split(clients: u32, workers: usize) -> Vec<Range<u32>> {
    let workers = workers.max(1) as u64;
    (0..workers)
        .map(|w| {
            let start = (clients as u64 * w / workers) as u32;
            let end = (clients as u64 * (w + 1) / workers) as u32;
            start..end
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_client_once() {
        let parts = split(10, 3);
        assert_eq!(parts, vec![0..3, 3..6, 6..10]);
        assert_eq!(split(5, 1), vec![0..5]);
    }

    #[test]
    fn audience_counts_subscribers() {
        let layout = Layout::OwnPlusShared { clients: 3 };
        assert_eq!(layout.audience(3, |c| c != 1), vec![1, 0, 1, 2]);
        let spread = Layout::Spread { channels: 2 };
        assert_eq!(spread.audience(5, |_| true), vec![3, 2]);
        let every = Layout::Every { channels: 3 };
        assert_eq!(every.channels_of(1), vec![0, 1, 2]);
        assert_eq!(every.audience(4, |c| c != 0), vec![3, 3, 3]);
    }
}
