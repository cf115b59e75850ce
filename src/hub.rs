//! The in-process broadcast map: channel -> the inboxes of its local subscribers.
//!
//! The hub is the record of what should be subscribed on Redis. It knows nothing of Redis
//! or sockets: a channel gaining its first or losing its last subscriber is marked dirty,
//! and the Redis subscriber reconciles against the live map. So the hub never waits on
//! Redis, and subscribes made during an outage are simply the state it reconciles to.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use indexmap::IndexMap;
use tokio::sync::Notify;

use crate::channel::Name;
use crate::inbox::Inbox;
use crate::metrics::Metrics;
use crate::payload;

/// Identifies a session inside the hub.
pub type SessionId = u64;

/// What one publication cost, for the caller's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub queued: u64,
    pub dropped: u64,
}

pub struct Hub {
    /// Invariant: an entry exists exactly while it has at least one subscriber.
    channels: DashMap<Name, IndexMap<SessionId, Arc<Inbox>>>,
    /// Channels whose first subscriber came or last one left since the reconciler looked.
    /// Bounded by the number of distinct channels, unlike a queue of events.
    dirty: Mutex<HashSet<Name>>,
    changed: Notify,
    metrics: Metrics,
}

impl Hub {
    pub fn new(metrics: Metrics) -> Self {
        Hub {
            channels: DashMap::new(),
            dirty: Mutex::default(),
            changed: Notify::new(),
            metrics,
        }
    }

    /// Adds a session to a (valid) channel; returns the shared name and whether the session
    /// was not there already.
    pub fn subscribe(&self, name: &str, session: SessionId, inbox: &Arc<Inbox>) -> (Name, bool) {
        // Fast path: the channel exists, so no key allocation.
        if let Some(mut subscribers) = self.channels.get_mut(name) {
            let shared = subscribers.key().clone();
            let added = subscribers.insert(session, inbox.clone()).is_none();
            drop(subscribers);
            self.count_added(added);
            return (shared, added);
        }
        let shared: Name = Arc::from(name);
        let (added, first) = match self.channels.entry(shared.clone()) {
            Entry::Occupied(mut entry) => (
                entry.get_mut().insert(session, inbox.clone()).is_none(),
                false,
            ),
            Entry::Vacant(entry) => {
                entry.insert(IndexMap::from([(session, inbox.clone())]));
                (true, true)
            }
        };
        self.count_added(added);
        if first {
            self.mark_dirty(&shared);
        }
        (shared, added)
    }

    /// Removes a session from a channel; removing the last subscriber removes the channel.
    pub fn unsubscribe(&self, name: &Name, session: SessionId) {
        let Entry::Occupied(mut entry) = self.channels.entry(name.clone()) else {
            return;
        };
        if entry.get_mut().swap_remove(&session).is_none() {
            return;
        }
        self.metrics.subscriptions.dec();
        if entry.get().is_empty() {
            entry.remove();
            self.mark_dirty(name);
        }
    }

    /// Queues consecutive publications on `channel` to every local subscriber, encoding
    /// each once and pushing them to each inbox in one go. Never waits: a full inbox drops
    /// frames for that client only.
    pub fn publish<'a>(
        &self,
        channel: &str,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Fanout {
        let mut outcome = Fanout::default();
        let Some(subscribers) = self.channels.get(channel) else {
            return outcome;
        };
        let frames: Vec<_> = payloads
            .into_iter()
            .map(|data| payload::message(channel, data))
            .collect();
        for inbox in subscribers.values() {
            let pushed = inbox.push(subscribers.key(), &frames);
            outcome.queued += pushed.queued;
            outcome.dropped += pushed.dropped;
        }
        outcome
    }

    /// Whether some local client holds `channel` right now.
    pub fn is_live(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Every channel some local client holds, at this moment.
    pub fn live_channels(&self) -> Vec<Name> {
        self.channels.iter().map(|e| e.key().clone()).collect()
    }

    /// Takes the set of channels changed since the last call.
    pub fn take_dirty(&self) -> HashSet<Name> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when some channel was marked dirty. Cancel-safe.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn mark_dirty(&self, name: &Name) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        self.changed.notify_one();
    }

    fn count_added(&self, added: bool) {
        if added {
            self.metrics.subscriptions.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::Batch;

    fn hub() -> Hub {
        Hub::new(Metrics::new(prometheus::Registry::new()).unwrap())
    }

    fn drained(inbox: &Inbox) -> Vec<String> {
        let mut batch = Batch::default();
        inbox.drain(&mut batch);
        batch.frames.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn first_and_last_subscriber_mark_the_channel_dirty() {
        let hub = hub();
        let (one, two) = (Arc::new(Inbox::new(4)), Arc::new(Inbox::new(4)));
        let (news, added) = hub.subscribe("news", 1, &one);
        assert!(added);
        assert_eq!(hub.take_dirty(), HashSet::from([news.clone()]));
        assert!(
            !hub.subscribe("news", 1, &one).1,
            "a second subscribe adds nothing"
        );
        hub.subscribe("news", 2, &two);
        assert!(
            hub.take_dirty().is_empty(),
            "only the first subscriber marks"
        );
        hub.unsubscribe(&news, 1);
        assert!(hub.take_dirty().is_empty() && hub.is_live("news"));
        hub.unsubscribe(&news, 2);
        assert_eq!(hub.take_dirty(), HashSet::from([news]));
        assert!(!hub.is_live("news") && hub.live_channels().is_empty());
        assert_eq!(hub.metrics.subscriptions.get(), 0);
    }

    #[test]
    fn publish_reaches_each_subscriber_once_and_no_one_else() {
        let hub = hub();
        let (one, two, other) = (
            Arc::new(Inbox::new(4)),
            Arc::new(Inbox::new(4)),
            Arc::new(Inbox::new(4)),
        );
        hub.subscribe("news", 1, &one);
        hub.subscribe("news", 1, &one);
        hub.subscribe("news", 2, &two);
        hub.subscribe("sport", 3, &other);
        assert_eq!(
            hub.publish("news", [&b"1"[..]]),
            Fanout {
                queued: 2,
                dropped: 0
            }
        );
        assert_eq!(hub.publish("nobody", [&b"1"[..]]), Fanout::default());
        let expected = vec![r#"{"op":"message","channel":"news","data":1}"#.to_string()];
        assert_eq!(drained(&one), expected);
        assert_eq!(drained(&two), expected);
        assert!(drained(&other).is_empty());
    }

    #[test]
    fn a_full_inbox_drops_for_that_client_only() {
        let hub = hub();
        let (slow, fast) = (Arc::new(Inbox::new(1)), Arc::new(Inbox::new(8)));
        hub.subscribe("c", 1, &slow);
        hub.subscribe("c", 2, &fast);
        hub.publish("c", [&b"1"[..]]);
        assert_eq!(
            hub.publish("c", [&b"2"[..], b"3"]),
            Fanout {
                queued: 2,
                dropped: 2
            }
        );
        assert_eq!(drained(&fast).len(), 3);
        assert_eq!(drained(&slow).len(), 1);
    }
}
