//! The in-process broadcast map: channel -> its tape, which its local subscribers read.
//!
//! The hub is the record of what should be subscribed on Redis. It knows nothing of Redis
//! or sockets: a channel gaining its first or losing its last subscriber is marked dirty,
//! and the Redis subscriber reconciles against the live map. So the hub never waits on
//! Redis, and subscribes made during an outage are simply the state it reconciles to.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::channel::Name;
use crate::history::offset::open_envelope;
use crate::history::Rules;
use crate::inbox::Inbox;
use crate::metrics::Metrics;
use crate::payload;
pub use crate::tape::SessionId;
use crate::tape::{Budget, Cursor, Tape};

pub struct Hub {
    /// Invariant: an entry exists exactly while its tape has at least one subscriber.
    channels: DashMap<Name, Arc<Tape>>,
    /// Frames each tape keeps.
    capacity: usize,
    /// Which channels keep history.
    history: Rules,
    /// Bytes the tapes may keep, per channel and in all.
    budget: Arc<Budget>,
    /// Channels whose first subscriber came or last one left since the reconciler looked.
    /// Bounded by the number of distinct channels, unlike a queue of events, and kept
    /// only while a connection is there to reconcile: during an outage a reconnect
    /// resubscribes the live set anyway, and churn through ever new names (50/s per client
    /// at the rate limit) would grow it without bound.
    dirty: Mutex<HashSet<Name>>,
    /// Whether changes are being tracked for a live connection (`track_changes`).
    tracking: std::sync::atomic::AtomicBool,
    changed: Notify,
    metrics: Metrics,
}

impl Hub {
    /// `capacity`: frames each channel keeps for subscribers that are behind; `history`:
    /// the channels that keep history; `budget`: the bytes they may keep.
    pub fn new(metrics: Metrics, capacity: usize, history: Rules, budget: Arc<Budget>) -> Self {
        Hub {
            channels: DashMap::new(),
            capacity,
            history,
            budget,
            dirty: Mutex::default(),
            tracking: std::sync::atomic::AtomicBool::new(false),
            changed: Notify::new(),
            metrics,
        }
    }

    /// Adds a session to a (valid) channel it does not hold yet; returns the channel's
    /// tape and the session's cursor on it (the next publication).
    pub fn subscribe(
        &self,
        name: &str,
        session: SessionId,
        inbox: &Arc<Inbox>,
    ) -> (Arc<Tape>, Cursor) {
        self.metrics.subscriptions.inc();
        // Fast path: the channel exists, so no key allocation. Joining under the map's
        // lock keeps a last unsubscribe from removing the tape in between.
        if let Some(tape) = self.channels.get(name) {
            let cursor = tape.join(session, inbox);
            return (tape.clone(), cursor);
        }
        let shared: Name = Arc::from(name);
        match self.channels.entry(shared.clone()) {
            Entry::Occupied(entry) => {
                let tape = entry.get().clone();
                let cursor = tape.join(session, inbox);
                (tape, cursor)
            }
            Entry::Vacant(entry) => {
                let rule = self.history.find(name);
                let tape = Arc::new(Tape::new(
                    shared.clone(),
                    self.capacity,
                    rule,
                    self.budget.clone(),
                ));
                let cursor = tape.join(session, inbox);
                entry.insert(tape.clone());
                self.mark_dirty(&shared);
                (tape, cursor)
            }
        }
    }

    /// Removes a session at `cursor` from a channel; removing the last subscriber removes
    /// the channel. Returns the publications the session never read (`Tape::leave`).
    pub fn unsubscribe(&self, name: &Name, session: SessionId, cursor: Cursor) -> u64 {
        let Entry::Occupied(entry) = self.channels.entry(name.clone()) else {
            return 0;
        };
        self.metrics.subscriptions.dec();
        let (left, unread) = entry.get().leave(session, cursor);
        if left == 0 {
            entry.remove();
            self.mark_dirty(name);
        }
        unread
    }

    /// Appends consecutive publications on `channel` to its tape, encoding each once
    /// (with its offset when Redis kept it); returns how many deliveries that makes
    /// (frames x local subscribers). Never waits.
    pub fn publish<'a>(&self, channel: &str, payloads: impl IntoIterator<Item = &'a [u8]>) -> u64 {
        // The map's lock is not held while subscribers are told.
        let Some(tape) = self.tape(channel) else {
            return 0;
        };
        let items: Vec<_> = payloads
            .into_iter()
            .map(|payload| {
                let (offset, data) = open_envelope(payload);
                (offset, payload::message(channel, data, offset))
            })
            .collect();
        tape.publish(items)
    }

    /// The tape of `channel`, while some local client holds it.
    pub fn tape(&self, channel: &str) -> Option<Arc<Tape>> {
        self.channels.get(channel).map(|t| t.clone())
    }

    /// Every tape some local client holds, at this moment.
    pub fn live_tapes(&self) -> Vec<Arc<Tape>> {
        self.channels.iter().map(|e| e.value().clone()).collect()
    }

    /// Every channel local clients hold, with how many hold it, at this moment.
    pub fn counts(&self) -> Vec<(Name, usize)> {
        let tapes = self.live_tapes();
        tapes
            .iter()
            .map(|tape| (tape.name().clone(), tape.subscribers()))
            .collect()
    }

    /// Whether some local client holds `channel` right now.
    pub fn is_live(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Starts (a connection is up: call before taking its snapshot of live channels) or
    /// stops (it is lost) tracking changes; stopping forgets the changes tracked.
    pub fn track_changes(&self, on: bool) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        self.tracking
            .store(on, std::sync::atomic::Ordering::Release);
        if !on {
            *dirty = HashSet::new();
        }
    }

    /// Takes the set of channels changed since the last call.
    pub fn take_dirty(&self) -> HashSet<Name> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when some channel was marked dirty. Cancel-safe.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn mark_dirty(&self, name: &Name) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock `track_changes` takes: a mark is never lost between a
        // connection's start and its snapshot.
        if !self.tracking.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        dirty.insert(name.clone());
        drop(dirty);
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn names(hub: &Hub) -> Vec<Name> {
        hub.live_tapes().iter().map(|t| t.name().clone()).collect()
    }

    fn hub() -> Hub {
        let hub = Hub::new(
            Metrics::new(prometheus::Registry::new()).unwrap(),
            8,
            Rules::default(),
            crate::tape::Budget::unlimited(),
        );
        hub.track_changes(true);
        hub
    }

    #[test]
    fn changes_are_not_kept_while_no_connection_reconciles() {
        let hub = hub();
        hub.track_changes(false);
        let inbox = Arc::new(Inbox::new());
        // An outage's churn through ever new names.
        for i in 0..1000 {
            let (tape, _) = hub.subscribe(&format!("n{i}"), 1, &inbox);
            hub.unsubscribe(tape.name(), 1, 0);
        }
        let (held, _) = hub.subscribe("held", 1, &inbox);
        assert!(
            hub.take_dirty().is_empty(),
            "nothing kept during the outage"
        );
        // Back: the live set is the snapshot; changes from now on are tracked.
        hub.track_changes(true);
        assert_eq!(names(&hub), [held.name().clone()]);
        hub.unsubscribe(held.name(), 1, 0);
        assert_eq!(hub.take_dirty(), HashSet::from([held.name().clone()]));
    }

    /// What a subscriber told of news reads from its tape.
    fn read(inbox: &Arc<Inbox>, session: SessionId, cursor: &mut Cursor) -> Vec<String> {
        let mut pending = Vec::new();
        let _ = inbox.take(&mut pending);
        let mut out = VecDeque::new();
        for tape in pending {
            tape.read(cursor, session, inbox, &mut out);
        }
        out.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn first_and_last_subscriber_mark_the_channel_dirty() {
        let hub = hub();
        let (one, two) = (Arc::new(Inbox::new()), Arc::new(Inbox::new()));
        let (news, _) = hub.subscribe("news", 1, &one);
        assert_eq!(hub.take_dirty(), HashSet::from([news.name().clone()]));
        hub.subscribe("news", 2, &two);
        assert!(
            hub.take_dirty().is_empty(),
            "only the first subscriber marks"
        );
        hub.unsubscribe(news.name(), 1, 0);
        assert!(hub.take_dirty().is_empty() && hub.is_live("news"));
        hub.unsubscribe(news.name(), 2, 0);
        assert_eq!(hub.take_dirty(), HashSet::from([news.name().clone()]));
        assert!(!hub.is_live("news") && hub.live_tapes().is_empty());
        assert_eq!(hub.metrics.subscriptions.get(), 0);
    }

    #[test]
    fn publish_reaches_each_subscriber_once_and_no_one_else() {
        let hub = hub();
        let (one, two, other) = (
            Arc::new(Inbox::new()),
            Arc::new(Inbox::new()),
            Arc::new(Inbox::new()),
        );
        let (_, mut c1) = hub.subscribe("news", 1, &one);
        let (_, mut c2) = hub.subscribe("news", 2, &two);
        let (_, mut c3) = hub.subscribe("sport", 3, &other);
        assert_eq!(hub.publish("news", [&b"1"[..]]), 2);
        assert_eq!(hub.publish("nobody", [&b"1"[..]]), 0);
        let expected = vec![r#"{"op":"message","channel":"news","data":1}"#.to_string()];
        assert_eq!(read(&one, 1, &mut c1), expected);
        assert_eq!(read(&two, 2, &mut c2), expected);
        assert!(read(&other, 3, &mut c3).is_empty());
    }

    #[test]
    fn a_channel_left_and_joined_again_starts_afresh() {
        let hub = hub();
        let inbox = Arc::new(Inbox::new());
        let (old, _) = hub.subscribe("c", 1, &inbox);
        hub.publish("c", [&b"1"[..]]);
        hub.unsubscribe(old.name(), 1, 0);
        let (new, mut cursor) = hub.subscribe("c", 1, &inbox);
        assert!(!Arc::ptr_eq(&old, &new), "the last leave removed the tape");
        hub.publish("c", [&b"2"[..]]);
        let mut pending = Vec::new();
        let _ = inbox.take(&mut pending);
        // The stale mark from the old tape comes too; the session skips tapes it no
        // longer holds (session::subscriptions), so read only the held one.
        let mut out = VecDeque::new();
        new.read(&mut cursor, 1, &inbox, &mut out);
        let texts: Vec<&str> = out.iter().map(|f| f.as_str()).collect();
        assert_eq!(texts, [r#"{"op":"message","channel":"c","data":2}"#]);
    }
}
