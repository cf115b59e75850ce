//! The line protocol between the coordinator and its worker processes.
//!
//! Coordinator -> worker, on stdin: the plan (one JSON line), then one command per line.
//! Worker -> coordinator, on stdout: one JSON event per line. Stderr is the worker's own
//! diagnostics and goes straight to the terminal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tally::TallyWire;
use crate::wave::WaveWire;

/// Commands, one word a line (and `resume ...`, see `wave::Wave`).
pub const REPORT: &str = "report";
pub const MARK: &str = "mark";
pub const EXIT: &str = "exit";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// Every client has connected or failed.
    Ready(Ready),
    /// Sent every 100 ms once ready.
    Progress {
        received: u64,
        reached: u32,
        live: u32,
    },
    /// Answer to `mark`: a new epoch began; `reached` counts from zero.
    Marked { epoch: u32 },
    /// Every live client has had a publication on each of its channels in `epoch`.
    ReachedAll { epoch: u32 },
    /// Every client live when the reconnect wave began has caught up or failed.
    WaveOver,
    /// Answer to `report`: counts since the previous report, which are then reset.
    Report(Report),
    /// Answer to `exit`, the last line.
    Bye,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    pub connected: u32,
    /// Global indices of the clients that failed.
    pub failed: Vec<u32>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Per-client time from starting to connect to confirmation, µs histogram buckets.
    pub connect_us: Vec<(u64, u64)>,
    /// From the first attempt to the last client settled.
    pub elapsed_us: u64,
    /// This process's utime+stime so far.
    pub cpu_ticks: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub tally: TallyWire,
    /// Connections that ended since ready, by how they ended (e.g. `close 1008`).
    pub ends: BTreeMap<String, u64>,
    pub live: u32,
    pub cpu_ticks: u64,
    /// The reconnect wave so far (`resume` only); not reset by a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<Box<WaveWire>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_lines() {
        let line = serde_json::to_string(&Event::Marked { epoch: 2 }).expect("encodes");
        assert_eq!(line, r#"{"ev":"marked","epoch":2}"#);
        let back: Event = serde_json::from_str(r#"{"ev":"bye"}"#).expect("decodes");
        assert!(matches!(back, Event::Bye));
    }
}
