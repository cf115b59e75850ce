//! The channels one connection holds, kept in step with the hub.
//!
//! Dropping it unsubscribes everything, so a session that ends any way at all leaves
//! nothing behind in the hub or in `herald_subscriptions`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::channel::{self, Name};
use crate::hub::{Hub, SessionId};
use crate::inbox::Inbox;
use crate::protocol::{Code, Id, Refusal};

pub struct Subscriptions {
    session: SessionId,
    inbox: Arc<Inbox>,
    hub: Arc<Hub>,
    /// Sorted, so `ok` replies list channels in a stable order.
    held: BTreeSet<Name>,
    max: usize,
}

impl Subscriptions {
    pub fn new(session: SessionId, inbox: Arc<Inbox>, hub: Arc<Hub>, max: usize) -> Self {
        Subscriptions {
            session,
            inbox,
            hub,
            held: BTreeSet::new(),
            max,
        }
    }

    /// Checks a whole request before anything is subscribed (the contract is all-or-nothing).
    pub fn check(&self, id: &Id, names: &[impl AsRef<str>]) -> Result<(), Refusal> {
        check(id, names, self.max, &self.held)
    }

    /// Subscribes to every name or, when any is refused, to none.
    pub fn subscribe(&mut self, id: &Id, names: &[impl AsRef<str>]) -> Result<(), Refusal> {
        self.check(id, names)?;
        for name in names {
            let name = name.as_ref();
            if !self.held.contains(name) {
                let (shared, _) = self.hub.subscribe(name, self.session, &self.inbox);
                self.held.insert(shared);
            }
        }
        Ok(())
    }

    /// Unsubscribes; names not held are ignored.
    pub fn unsubscribe(&mut self, names: &[impl AsRef<str>]) {
        for name in names {
            if let Some(shared) = self.held.take(name.as_ref()) {
                self.hub.unsubscribe(&shared, self.session);
            }
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.held.iter().map(|name| &**name).collect()
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.held) {
            self.hub.unsubscribe(&name, self.session);
        }
    }
}

/// The shared rule for a subscribe request, also applied to the `channels` query before
/// the upgrade (with nothing held): every name valid, and the resulting set within `max`.
pub fn check(
    id: &Id,
    names: &[impl AsRef<str>],
    max: usize,
    held: &BTreeSet<Name>,
) -> Result<(), Refusal> {
    let mut new = BTreeSet::new();
    for name in names {
        let name = name.as_ref();
        if let Err(e) = channel::validate(name) {
            let shown: String = name.chars().take(64).collect();
            let message = format!("{}: {shown:?}", e.describe());
            return Err(Refusal::new(id.clone(), Code::BadChannel, message));
        }
        if !held.contains(name) {
            new.insert(name);
        }
    }
    if held.len() + new.len() > max {
        let message = format!("a connection may hold at most {max} channels");
        return Err(Refusal::new(
            id.clone(),
            Code::TooManySubscriptions,
            message,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn subscriptions(max: usize) -> (Subscriptions, Arc<Hub>) {
        let hub = Arc::new(Hub::new(Metrics::new(prometheus::Registry::new()).unwrap()));
        let inbox = Arc::new(Inbox::new(4));
        (Subscriptions::new(1, inbox, hub.clone(), max), hub)
    }

    #[test]
    fn all_or_nothing() {
        let (mut subs, hub) = subscriptions(2);
        let refusal = subs.subscribe(&None, &["good", "bad name"]).unwrap_err();
        assert_eq!(refusal.code, Code::BadChannel);
        assert!(subs.names().is_empty() && !hub.is_live("good"));

        subs.subscribe(&None, &["a", "b"]).unwrap();
        subs.subscribe(&None, &["a", "b", "a"]).unwrap();
        let refusal = subs.subscribe(&None, &["c"]).unwrap_err();
        assert_eq!(refusal.code, Code::TooManySubscriptions);
        assert_eq!(subs.names(), ["a", "b"]);
    }

    #[test]
    fn drop_leaves_nothing_behind() {
        let (mut subs, hub) = subscriptions(8);
        subs.subscribe(&None, &["a", "b"]).unwrap();
        subs.unsubscribe(&["a", "never"]);
        assert!(!hub.is_live("a") && hub.is_live("b"));
        drop(subs);
        assert!(hub.live_channels().is_empty());
    }
}
