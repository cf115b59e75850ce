//! What one worker's clients share: counters, connection outcomes and the marking epoch.
//!
//! The worker runs on one thread, so the clients share it through a `RefCell`, borrowed
//! once per read batch and never across an await.

use std::collections::BTreeMap;
use std::rc::Rc;

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::tally::{self, Tally};
use crate::wave::WaveTally;

pub struct State {
    pub tally: Tally,
    /// Stamps sent before this moment (ns since the epoch) are stale.
    pub not_before_ns: u64,
    /// Incremented by `mark`; 0 until the first mark, when nothing counts as reached.
    pub epoch: u32,
    /// Live clients that have seen a publication on each of their channels in `epoch`.
    pub reached: u32,
    /// Connected clients whose connection has not ended.
    pub live: u32,
    pub connected: u32,
    pub failed: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
    /// Time to connect and be confirmed, µs.
    pub connect_latency: Histogram<u64>,
    /// Connections that ended after connecting, by how.
    pub ends: BTreeMap<String, u64>,
    /// The reconnect wave (`resume`), from the command that starts it.
    pub wave: Option<WaveTally>,
    /// Wakes the worker's main loop: a client settled, ended, completed the epoch or
    /// caught up after the wave.
    pub wake: Rc<Notify>,
}

impl State {
    pub fn new(wake: Rc<Notify>, not_before_ns: u64) -> State {
        State {
            tally: Tally::new(),
            not_before_ns,
            epoch: 0,
            reached: 0,
            live: 0,
            connected: 0,
            failed: Vec::new(),
            errors: BTreeMap::new(),
            connect_latency: tally::histogram(),
            ends: BTreeMap::new(),
            wave: None,
            wake,
        }
    }

    pub fn mark(&mut self) -> u32 {
        self.epoch += 1;
        self.reached = 0;
        self.epoch
    }

    pub fn client_reached(&mut self) {
        self.reached += 1;
        if self.all_reached() {
            self.wake.notify_one();
        }
    }

    pub fn all_reached(&self) -> bool {
        self.epoch > 0 && self.reached >= self.live
    }

    pub fn connected(&mut self, micros: u64) {
        self.connected += 1;
        self.live += 1;
        self.connect_latency.saturating_record(micros.max(1));
        self.wake.notify_one();
    }

    pub fn failed(&mut self, client: u32, kind: String) {
        self.failed.push(client);
        *self.errors.entry(kind).or_default() += 1;
        self.wake.notify_one();
    }

    /// A connection ended; `reached` if it had completed the current epoch.
    pub fn ended(&mut self, how: String, reached: bool) {
        self.live -= 1;
        if reached && self.epoch > 0 {
            self.reached -= 1;
        }
        *self.ends.entry(how).or_default() += 1;
        self.wake.notify_one();
    }

    /// The wave begins: every live client is to come back.
    pub fn start_wave(&mut self) {
        self.wave = Some(WaveTally::new(self.live));
    }

    /// Whether a wave began and no client is still on its way back.
    pub fn wave_over(&self) -> bool {
        self.wave.as_ref().is_some_and(|w| w.waiting == 0)
    }

    pub fn settled(&self) -> u32 {
        self.connected + self.failed.len() as u32
    }
}
