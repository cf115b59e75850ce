//! The channels one connection holds, kept in step with the hub, and where it is on each
//! channel's tape.
//!
//! Dropping it unsubscribes everything, so a session that ends any way at all leaves
//! nothing behind in the hub or in `herald_subscriptions`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::channel::{self, Name};
use crate::history::sequence::Read;
use crate::history::Position;
use crate::hub::Hub;
use crate::inbox::{Batch, Inbox};
use crate::protocol::{self, Code, Id, Refusal};
use crate::tape::{Cursor, Joined, Resume, SessionId, Tape};

/// The size limits a subscribe request must keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Channels one connection may hold.
    pub held: usize,
    /// Channels one request may name.
    pub per_request: usize,
}

pub struct Subscriptions {
    session: SessionId,
    inbox: Arc<Inbox>,
    hub: Arc<Hub>,
    /// Each held channel's tape and where this connection is on it, sorted by the
    /// tape's address to find a marked tape fast. (The only per-channel record: a set of
    /// names beside it cost an allocation of ~200 bytes per idle connection.)
    held: Vec<(Arc<Tape>, Cursor)>,
    limits: Limits,
}

impl Subscriptions {
    pub fn new(session: SessionId, inbox: Arc<Inbox>, hub: Arc<Hub>, limits: Limits) -> Self {
        Subscriptions {
            session,
            inbox,
            hub,
            held: Vec::new(),
            limits,
        }
    }

    /// Subscribes to every name or, when any is refused, to none. `allowed` says what the
    /// connection's credentials permit. Returns the tapes newly joined.
    pub fn subscribe(
        &mut self,
        id: &Id,
        names: &[impl AsRef<str>],
        allowed: impl Fn(&str) -> bool,
    ) -> Result<Vec<Arc<Tape>>, Refusal> {
        check(id, names, self.limits, &self.names(), allowed)?;
        let mut joined = Vec::new();
        for name in names {
            let name = name.as_ref();
            if self.find(name).is_none() {
                let (tape, cursor) = self.hub.subscribe(name, self.session, &self.inbox);
                let at = self.position(&tape).unwrap_or_else(|at| at);
                self.held.insert(at, (tape.clone(), cursor));
                joined.push(tape);
            }
        }
        // A channel Redis refused moments ago, whose last subscribers are still leaving:
        // all or nothing, as for any refusal.
        if let Some(tape) = joined.iter().find(|tape| tape.is_refused()) {
            let message = format!("redis refused {:?}", tape.name());
            let names: Vec<Name> = joined.iter().map(|tape| tape.name().clone()).collect();
            self.unsubscribe(&names);
            return Err(Refusal::new(id.clone(), Code::Forbidden, message));
        }
        Ok(joined)
    }

    /// Whether the connection holds `name`.
    pub fn holds(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// Resumes a just-joined history tape after `since`, from what it holds in memory.
    pub fn resume(&mut self, tape: &Arc<Tape>, since: &Position) -> Resume {
        let Ok(at) = self.position(tape) else {
            return Resume::NotRecovered;
        };
        let cursor = &mut self.held[at].1;
        tape.resume(cursor, self.session, &self.inbox, since)
    }

    /// Completes a resume with what Redis read; see `Tape::resume_with`.
    pub fn resume_with(&mut self, tape: &Arc<Tape>, since: &Position, read: &Read) -> Joined {
        let Ok(at) = self.position(tape) else {
            return Joined::Hole;
        };
        let cursor = &mut self.held[at].1;
        tape.resume_with(cursor, self.session, &self.inbox, since, read)
    }

    /// Where this connection stands on history channel `tape`; see `Tape::offset_at`.
    pub fn offset(&self, tape: &Arc<Tape>) -> Option<Position> {
        let at = self.position(tape).ok()?;
        tape.offset_at(self.held[at].1)
    }

    /// `offset` for every history channel held, by name (for the `welcome`, before the
    /// connection read anything).
    pub fn offsets(&self) -> Vec<(String, String)> {
        self.held
            .iter()
            .filter_map(|(tape, cursor)| {
                let at = tape.offset_at(*cursor)?;
                Some((tape.name().to_string(), at.to_string()))
            })
            .collect()
    }

    /// Unsubscribes; names not held are ignored.
    pub fn unsubscribe(&mut self, names: &[impl AsRef<str>]) {
        for name in names {
            if let Some(at) = self.find(name.as_ref()) {
                let (tape, cursor) = self.held.remove(at);
                self.hub.unsubscribe(tape.name(), self.session, cursor);
            }
        }
    }

    /// Drops every channel the connection may no longer hold (after a token refresh).
    pub fn retain(&mut self, allowed: impl Fn(&str) -> bool) {
        let refused: Vec<Name> = self
            .held
            .iter()
            .map(|(tape, _)| tape.name())
            .filter(|name| !allowed(name))
            .cloned()
            .collect();
        self.unsubscribe(&refused);
    }

    /// The held channels, sorted, so `ok` replies list them in a stable order.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.held.iter().map(|(tape, _)| &**tape.name()).collect();
        names.sort_unstable();
        names
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.held
            .iter()
            .position(|(tape, _)| **tape.name() == *name)
    }

    /// Reads what the marked `tapes` hold for this connection into `batch`, emptying
    /// `tapes`; what it missed is counted in `batch.missed` and told with a `lagged`
    /// frame in place. A tape it no longer holds (left
    /// after the mark) is skipped.
    pub fn read(&mut self, tapes: &mut Vec<Arc<Tape>>, batch: &mut Batch) {
        for tape in tapes.drain(..) {
            let Ok(at) = self.position(&tape) else {
                continue;
            };
            let cursor = &mut self.held[at].1;
            let before = batch.frames.len();
            let missed = tape.read(cursor, self.session, &self.inbox, &mut batch.frames);
            if missed > 0 {
                // Where the dropped ones were: after what the client got before them, so
                // its last offset is the one to resume from (contract 1.1).
                let lagged = protocol::lagged(tape.name(), missed);
                batch.frames.insert(before, lagged.into());
                batch.missed += missed;
            }
            if tape.is_refused() {
                // Its `error` was among what was just read: the channel is gone.
                let (tape, cursor) = self.held.remove(at);
                self.hub.unsubscribe(tape.name(), self.session, cursor);
            }
        }
    }

    /// Leaves every channel; returns the publications this connection never read, each
    /// counted as it leaves, so one appended meanwhile is either read or counted.
    pub fn leave_all(&mut self) -> u64 {
        let held = std::mem::take(&mut self.held);
        held.into_iter()
            .map(|(tape, cursor)| self.hub.unsubscribe(tape.name(), self.session, cursor))
            .sum()
    }

    fn position(&self, tape: &Arc<Tape>) -> Result<usize, usize> {
        let address = Arc::as_ptr(tape) as usize;
        self.held
            .binary_search_by_key(&address, |(held, _)| Arc::as_ptr(held) as usize)
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.leave_all();
    }
}

/// The shared rule for a subscribe request, also applied to the `channels` query before
/// the upgrade (with nothing held). `held` is sorted. Checked in this order, so the error
/// names the first thing to fix: request size, each name's form, permission, then the
/// total held.
pub fn check(
    id: &Id,
    names: &[impl AsRef<str>],
    limits: Limits,
    held: &[&str],
    allowed: impl Fn(&str) -> bool,
) -> Result<(), Refusal> {
    if names.len() > limits.per_request {
        let message = format!("a request may name at most {} channels", limits.per_request);
        return Err(Refusal::new(id.clone(), Code::BadRequest, message));
    }
    let mut new = BTreeSet::new();
    for name in names {
        let name = name.as_ref();
        if let Err(e) = channel::validate(name) {
            let shown: String = name.chars().take(64).collect();
            let message = format!("{}: {shown:?}", e.describe());
            return Err(Refusal::new(id.clone(), Code::BadChannel, message));
        }
        if !allowed(name) {
            let message = format!("not allowed to subscribe to {name:?}");
            return Err(Refusal::new(id.clone(), Code::Forbidden, message));
        }
        if held.binary_search(&name).is_err() {
            new.insert(name);
        }
    }
    if held.len() + new.len() > limits.held {
        let message = format!("a connection may hold at most {} channels", limits.held);
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

    fn subscriptions(held: usize) -> (Subscriptions, Arc<Hub>) {
        let hub = Arc::new(Hub::new(
            Metrics::new(prometheus::Registry::new()).unwrap(),
            4,
            crate::history::Rules::default(),
            crate::tape::Budget::unlimited(),
        ));
        let inbox = Arc::new(Inbox::new());
        let limits = Limits {
            held,
            per_request: 3,
        };
        (Subscriptions::new(1, inbox, hub.clone(), limits), hub)
    }

    fn anything(_: &str) -> bool {
        true
    }

    #[test]
    fn all_or_nothing() {
        let (mut subs, hub) = subscriptions(2);
        let refusal = subs
            .subscribe(&None, &["good", "bad name"], anything)
            .unwrap_err();
        assert_eq!(refusal.code, Code::BadChannel);
        assert!(subs.names().is_empty() && !hub.is_live("good"));

        let only_a = |name: &str| name == "a";
        let refusal = subs.subscribe(&None, &["a", "b"], only_a).unwrap_err();
        assert_eq!(refusal.code, Code::Forbidden);
        assert!(subs.names().is_empty() && !hub.is_live("a"));

        assert_eq!(
            subs.subscribe(&None, &["a", "b"], anything).unwrap().len(),
            2
        );
        let again = subs.subscribe(&None, &["a", "b", "a"], anything).unwrap();
        assert!(again.is_empty(), "nothing newly joined");
        let refusal = subs.subscribe(&None, &["c"], anything).unwrap_err();
        assert_eq!(refusal.code, Code::TooManySubscriptions);
        let refusal = subs
            .subscribe(&None, &["a", "a", "a", "a"], anything)
            .unwrap_err();
        assert_eq!(refusal.code, Code::BadRequest, "per-request limit");
        assert_eq!(subs.names(), ["a", "b"]);

        subs.retain(only_a);
        assert_eq!(subs.names(), ["a"]);
        assert!(!hub.is_live("b"));
    }

    #[test]
    fn drop_leaves_nothing_behind() {
        let (mut subs, hub) = subscriptions(8);
        subs.subscribe(&None, &["a", "b"], anything).unwrap();
        subs.unsubscribe(&["a", "never"]);
        assert!(!hub.is_live("a") && hub.is_live("b"));
        drop(subs);
        assert!(hub.live_tapes().is_empty());
    }
}
