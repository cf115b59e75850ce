//! The subscriber side of a Redis Cluster: one link (RESP3 connection) per master, each
//! channel SSUBSCRIBEd on the master that owns its slot; the invariant of a single Redis,
//! held per master: once things settle, what each master carries equals the local
//! channels it owns.
//!
//! ```text
//! start:   CLUSTER SHARDS from a seed -> a link per master -> SSUBSCRIBE the hub's union
//! follow:  hub changes -> (S)SUBSCRIBE / SUNSUBSCRIBE on the owner
//!          a link lost, a `sunsubscribe` Redis sent unasked (slot moved), MOVED,
//!          or the periodic refresh -> its channels are *moving*: their tapes hold live
//!          publications; `rehome` asks for the topology again, subscribes them on
//!          their owner, and hands them back to be gap-filled
//! ```
//!
//! A master that fails costs only its own channels anything: the other links go on. Its
//! channels wait (homeless) until a replica is promoted and the topology says so; history
//! channels are then filled from the new master, the others get `gap`. redis-rs's cluster
//! client is not used for subscribing: it re-sends a node's shard channels as one
//! SSUBSCRIBE (CROSSSLOT across slots, the error dropped) and forgets a channel on an
//! unsolicited `sunsubscribe` (research notes 4.3).

mod link;
mod serve;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::ConnectionInfo;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::intake::Intake;
use super::io::{self, Io};
use super::reconcile::BatchError;
use super::topology::{self, Topology};
use crate::channel::{Name, Prefix};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::tape::Tape;
pub use link::Event;
use link::Link;

/// How often the topology is read again when nothing prompted it: a backstop for moves
/// Redis does not announce (on 7.0 a replica moved to another master sends no
/// `sunsubscribe`: research notes 4.6). Centrifugo polls every 30 s too.
pub const REFRESH: Duration = Duration::from_secs(30);

impl Drop for Shards<'_> {
    /// The subscriber starts over (or stops): no link is up any more.
    fn drop(&mut self) {
        for addr in self.links.keys() {
            self.cx.metrics.set_node_connected(addr, false);
        }
    }
}

/// Channels `go_home` subscribed: new ones (to anchor) and the tapes of moved ones (to
/// fill).
#[derive(Default)]
struct Homed {
    new: Vec<Name>,
    filled: Vec<Arc<Tape>>,
}

/// What the shards need from the subscriber, for their whole life.
pub struct Context<'a> {
    pub io: &'a Io,
    pub seeds: &'a [ConnectionInfo],
    pub intake: &'a Arc<Intake>,
    pub events: UnboundedSender<Event>,
    pub hub: &'a Hub,
    pub prefix: &'a Prefix,
    pub metrics: &'a Metrics,
    pub timeout: Duration,
    /// The function library's source, when history is on: loaded on each master as it
    /// is linked, so a master that joined by a resharding has it before a publisher
    /// calls it (Redis does not copy functions to a new node: research notes 4.6).
    pub library: Option<String>,
}

pub struct Shards<'a> {
    cx: Context<'a>,
    topology: Topology,
    pub(super) links: HashMap<Arc<str>, Link>,
    /// Channels confirmed on a link, and which.
    home: HashMap<Name, Arc<str>>,
    /// Live channels on no link yet (their master unreachable, or their slot unowned).
    homeless: HashSet<Name>,
    /// Of those, the ones that lost a home: their tapes hold live publications and must be
    /// filled once home again (a new channel is anchored instead).
    moving: HashSet<Name>,
    /// The link carrying the control channel.
    control: Option<Arc<str>>,
    /// Redis's ACL refuses Herald the control channel: nothing to wait for.
    control_refused: bool,
    /// Something suggested the topology changed: `rehome` should read it again.
    stale: bool,
    /// Links made so far (each link's serial).
    serials: u64,
}

impl<'a> Shards<'a> {
    /// Reads the topology and links every master that answers (one at least).
    pub async fn start(cx: Context<'a>) -> Result<Shards<'a>, String> {
        let topology = topology::fetch(cx.seeds, cx.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let mut shards = Shards {
            cx,
            topology,
            links: HashMap::new(),
            home: HashMap::new(),
            homeless: HashSet::new(),
            moving: HashSet::new(),
            control: None,
            control_refused: false,
            stale: false,
            serials: 0,
        };
        for index in 0..shards.topology.masters().len() {
            if let Err(e) = shards.link(index).await {
                let addr = shards.topology.masters()[index].addr();
                warn!(node = %addr, error = %e, "redis cluster master unreachable");
            }
        }
        if shards.links.is_empty() {
            return Err("no cluster master answered".into());
        }
        Ok(shards)
    }

    /// Whether every live channel is on its master (what `/readyz` reports).
    pub fn settled(&self) -> bool {
        self.homeless.is_empty() && (self.control.is_some() || self.control_refused)
    }

    /// Whether `rehome` has work: something is off its master, or the topology may have
    /// changed.
    pub fn needs_rehome(&self) -> bool {
        self.stale || !self.settled()
    }

    /// The periodic refresh: read the topology again on the next `rehome`.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Subscribes the control channel on some link; a refusal is logged (as for a single
    /// Redis: only the server API's disconnect needs it).
    pub async fn subscribe_control(&mut self) -> Result<(), BatchError> {
        if self.control.is_some() || self.control_refused {
            return Ok(());
        }
        let control = self.cx.prefix.control();
        let (intake, timeout) = (self.cx.intake, self.cx.timeout);
        for link in self.links.values_mut() {
            match link.subscribe_control(&control, intake, timeout).await {
                Ok(()) => {
                    self.control = Some(link.addr.clone());
                    return Ok(());
                }
                Err(BatchError::Redis(e)) if e.code() == Some("NOPERM") => {
                    warn!(channel = %control, error = %e, "redis refused the control channel; \
                          the server API's disconnect will not reach this instance");
                    self.control_refused = true;
                    return Ok(());
                }
                Err(e) => warn!(node = %link.addr, error = %e, "control channel not subscribed"),
            }
        }
        Ok(())
    }

    /// On a fresh start: every channel clients hold goes home; returns the tapes to fill.
    pub async fn resubscribe_all(&mut self) -> Vec<Arc<Tape>> {
        self.cx.hub.track_changes(true);
        self.cx.hub.take_dirty();
        for tape in self.cx.hub.live_tapes() {
            tape.begin_fill();
            self.homeless.insert(tape.name().clone());
            self.moving.insert(tape.name().clone());
        }
        self.go_home().await.filled
    }

    /// Follows the hub's changes; returns the changed channels that are live and home
    /// (new ones to anchor), as `Reconciler::reconcile` does.
    pub async fn reconcile(&mut self) -> (Vec<Name>, Vec<Arc<Tape>>) {
        let mut live = Vec::new();
        let mut leaving: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for name in self.cx.hub.take_dirty() {
            let is_live = self.cx.hub.is_live(&name);
            match (is_live, self.home.get(&name)) {
                (true, Some(_)) => live.push(name),
                (true, None) => {
                    self.homeless.insert(name);
                }
                (false, Some(_)) => {
                    // Off the record before the command: the `sunsubscribe` it brings
                    // back must not read as a move.
                    let addr = self.home.remove(&name).expect("matched");
                    leaving
                        .entry(addr)
                        .or_default()
                        .push(self.cx.prefix.to_redis(&name));
                }
                (false, None) => {
                    self.homeless.remove(&name);
                    self.moving.remove(&name);
                }
            }
        }
        for (addr, channels) in leaving {
            let (intake, timeout) = (self.cx.intake, self.cx.timeout);
            let Some(link) = self.links.get_mut(&addr) else {
                continue;
            };
            if let Err(e) = link.unsubscribe(&channels, intake, timeout).await {
                self.lose(&addr, &e.to_string());
            }
        }
        let Homed { new, filled } = self.go_home().await;
        live.extend(new);
        self.count();
        (live, filled)
    }

    /// Takes a link's event: its channels start moving.
    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Lost(id) if self.current(&id) => self.lose(&id.0, "connection closed"),
            Event::Confused(id) if self.current(&id) => {
                self.lose(&id.0, "an unasked sunsubscribe took a command's reply");
            }
            Event::Dropped(id, channel) if self.current(&id) => {
                let addr = id.0;
                let Some(name) = std::str::from_utf8(&channel)
                    .ok()
                    .and_then(|redis_name| self.cx.prefix.from_redis(redis_name))
                else {
                    return;
                };
                if self.home.get(name) == Some(&addr) {
                    let name = self.home.remove_entry(name).expect("checked").0;
                    self.leave_home(name);
                    self.stale = true;
                }
            }
            // From a link already replaced.
            _ => {}
        }
    }

    fn current(&self, (addr, serial): &link::LinkId) -> bool {
        self.links
            .get(addr)
            .is_some_and(|link| link.serial == *serial)
    }

    /// Reads the topology again and moves what it says moved; returns the tapes of the
    /// channels that came home, to be filled.
    pub async fn rehome(&mut self) -> Vec<Arc<Tape>> {
        match topology::fetch(self.cx.seeds, self.cx.timeout).await {
            Ok(topology) => {
                self.topology = topology;
                self.stale = false;
            }
            Err(e) => {
                warn!(error = %e, "redis cluster topology not readable; retrying");
                return Vec::new();
            }
        }
        // Links to nodes that are masters no more.
        let masters: HashSet<String> = self.topology.masters().iter().map(|m| m.addr()).collect();
        let gone: Vec<Arc<str>> = self
            .links
            .keys()
            .filter(|addr| !masters.contains(&***addr))
            .cloned()
            .collect();
        for addr in gone {
            self.lose(&addr, "no longer a master");
        }
        // Every master linked, also one that owns none of the local channels yet: it is
        // where their slots may move, and where publishers need the library.
        for index in 0..self.topology.masters().len() {
            let addr = self.topology.masters()[index].addr();
            if !self.links.contains_key(addr.as_str()) {
                if let Err(e) = self.link(index).await {
                    warn!(node = %addr, error = %e, "redis cluster master unreachable");
                }
            }
        }
        // Channels whose slot another master owns now.
        let mut moved: HashMap<Arc<str>, Vec<Name>> = HashMap::new();
        for (name, addr) in &self.home {
            let redis_name = self.cx.prefix.to_redis(name);
            let owner = self.topology.master_of(&redis_name).map(|m| m.addr());
            if owner.as_deref() != Some(&**addr) {
                moved.entry(addr.clone()).or_default().push(name.clone());
            }
        }
        for (addr, names) in moved {
            let channels: Vec<String> = names.iter().map(|n| self.cx.prefix.to_redis(n)).collect();
            info!(node = %addr, channels = names.len(), "channels moved to another master");
            for name in names {
                self.home.remove(&name);
                self.leave_home(name);
            }
            let (intake, timeout) = (self.cx.intake, self.cx.timeout);
            if let Some(link) = self.links.get_mut(&addr) {
                // Usually Redis dropped them already; a failure only means it did.
                let _ = link.unsubscribe(&channels, intake, timeout).await;
            }
        }
        let Homed { new, filled } = self.go_home().await;
        self.count();
        // A channel first subscribed while its master was away: anchor it now (through the
        // hub's change path, which anchors what it is told).
        for name in new {
            self.cx.hub.mark_dirty(&name);
        }
        filled
    }

    /// PINGs every link; a link that does not answer is lost.
    pub async fn probe(&mut self, deadline: Duration) {
        let mut dead = Vec::new();
        for link in self.links.values() {
            if let Err(e) = link.probe(self.cx.intake, deadline).await {
                dead.push((link.addr.clone(), e.to_string()));
            }
        }
        for (addr, why) in dead {
            self.lose(&addr, &why);
        }
    }

    /// Subscribes the homeless channels on their owners.
    async fn go_home(&mut self) -> Homed {
        let mut homed = Homed::default();
        if self.homeless.is_empty() {
            return homed;
        }
        let homeless: Vec<String> = self
            .homeless
            .iter()
            .map(|name| self.cx.prefix.to_redis(name))
            .collect();
        let groups = topology::group(&self.topology, homeless);
        if !groups.unowned.is_empty() {
            self.stale = true;
        }
        for (index, slots) in groups.masters {
            let addr: Arc<str> = self.topology.masters()[index].addr().into();
            if !self.links.contains_key(&addr) {
                if let Err(e) = self.link(index).await {
                    warn!(node = %addr, error = %e, "redis cluster master unreachable");
                    self.stale = true;
                    continue;
                }
            }
            let mut channels: Vec<String> = slots.into_values().flatten().collect();
            let (intake, timeout) = (self.cx.intake, self.cx.timeout);
            let link = self.links.get_mut(&addr).expect("linked");
            match link.subscribe(&channels, intake, timeout).await {
                Ok(()) => {}
                Err(BatchError::Redis(e)) if matches!(e.code(), Some("MOVED" | "ASK")) => {
                    self.stale = true;
                    continue;
                }
                // A channel the ACL refuses is about that channel, not the link (as on one
                // Redis: `reconcile`): find which, refuse those, keep the rest.
                Err(BatchError::Redis(e)) if e.code() == Some("NOPERM") => {
                    match self.refuse_the_refused(&addr, channels).await {
                        Ok(allowed) => channels = allowed,
                        Err(e) => {
                            self.lose(&addr, &e.to_string());
                            continue;
                        }
                    }
                }
                Err(e) => {
                    self.lose(&addr, &e.to_string());
                    continue;
                }
            }
            for channel in channels {
                let Some(name) = self.cx.prefix.from_redis(&channel) else {
                    continue;
                };
                let Some(name) = self.homeless.take(name) else {
                    continue;
                };
                if self.moving.remove(&name) {
                    homed.filled.extend(self.cx.hub.tape(&name));
                } else {
                    homed.new.push(name.clone());
                }
                self.home.insert(name, addr.clone());
            }
        }
        if self.control.is_none() {
            let _ = self.subscribe_control().await;
        }
        homed
    }

    /// Subscribes `channels` on link `addr` one by one; those the ACL refuses are refused
    /// to their subscribers (and leave the homeless). Returns the others.
    async fn refuse_the_refused(
        &mut self,
        addr: &Arc<str>,
        channels: Vec<String>,
    ) -> Result<Vec<String>, BatchError> {
        let (intake, timeout) = (self.cx.intake, self.cx.timeout);
        let link = self.links.get_mut(addr).expect("linked");
        let mut allowed = Vec::new();
        for channel in channels {
            match link
                .subscribe(std::slice::from_ref(&channel), intake, timeout)
                .await
            {
                Ok(()) => allowed.push(channel),
                Err(BatchError::Redis(e)) if e.code() == Some("NOPERM") => {
                    warn!(%channel, error = %e, "redis refused a channel; its subscribers are told");
                    let Some(name) = self.cx.prefix.from_redis(&channel) else {
                        continue;
                    };
                    self.homeless.remove(name);
                    self.moving.remove(name);
                    if let Some(tape) = self.cx.hub.tape(name) {
                        tape.refuse(&format!("redis refused the channel: {e}"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(allowed)
    }

    /// Connects the link to master `index`.
    async fn link(&mut self, index: usize) -> Result<(), BatchError> {
        let master = &self.topology.masters()[index];
        let addr: Arc<str> = master.addr().into();
        let seed = &self.cx.seeds[0];
        let client = redis::Client::open(master.connection_info(seed))
            .and_then(|client| io::resp3(&client))
            .map_err(BatchError::Redis)?;
        self.serials += 1;
        let mut link = Link::connect(
            self.cx.io,
            &client,
            addr.clone(),
            self.serials,
            self.cx.intake,
            &self.cx.events,
            self.cx.timeout,
        )
        .await?;
        if let Some(source) = &self.cx.library {
            link.load_library(source, self.cx.intake, self.cx.timeout)
                .await?;
        }
        info!(node = %addr, "redis cluster master linked");
        self.cx.metrics.set_node_connected(&addr, true);
        self.links.insert(addr, link);
        Ok(())
    }

    /// Lets link `addr` go; its channels start moving.
    fn lose(&mut self, addr: &Arc<str>, why: &str) {
        if self.links.remove(addr).is_none() {
            return;
        }
        self.cx.metrics.set_node_connected(addr, false);
        if self.control.as_ref() == Some(addr) {
            self.control = None;
        }
        let names: Vec<Name> = self
            .home
            .iter()
            .filter(|(_, home)| *home == addr)
            .map(|(name, _)| name.clone())
            .collect();
        warn!(node = %addr, channels = names.len(), cause = why, "redis cluster master lost");
        for name in names {
            self.home.remove(&name);
            self.leave_home(name);
        }
        self.stale = true;
        self.count();
    }

    /// A channel that was home is not: its tape holds live publications until filled.
    fn leave_home(&mut self, name: Name) {
        if let Some(tape) = self.cx.hub.tape(&name) {
            tape.begin_fill();
            self.moving.insert(name.clone());
            self.homeless.insert(name);
        }
    }

    fn count(&self) {
        self.cx.metrics.channels.set(self.home.len() as i64);
    }
}
