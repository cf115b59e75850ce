//! Who to close when the server API disconnects a user: each token subject's sessions,
//! reached through their inboxes.
//!
//! The request reaches every instance through Redis (`redis` routes the control channel
//! here); each closes its own sessions of that subject with 4003 `disconnected`.

use std::sync::Arc;

use dashmap::DashMap;

use crate::inbox::Inbox;
use crate::tape::SessionId;

#[derive(Default)]
pub struct Disconnects {
    by_subject: DashMap<String, Vec<(SessionId, Arc<Inbox>)>>,
}

impl Disconnects {
    /// Registers a session of `subject` until the returned guard is dropped.
    pub fn register(
        self: &Arc<Self>,
        subject: &str,
        session: SessionId,
        inbox: &Arc<Inbox>,
    ) -> Registration {
        self.by_subject
            .entry(subject.to_owned())
            .or_default()
            .push((session, inbox.clone()));
        Registration {
            registry: self.clone(),
            subject: subject.to_owned(),
            session,
        }
    }

    /// Tells every local session of `subject` to close; returns how many.
    pub fn disconnect(&self, subject: &str) -> usize {
        let Some(sessions) = self.by_subject.get(subject) else {
            return 0;
        };
        for (_, inbox) in sessions.iter() {
            inbox.disconnect();
        }
        sessions.len()
    }
}

/// A session's place in the registry; dropping it removes the session.
pub struct Registration {
    registry: Arc<Disconnects>,
    subject: String,
    session: SessionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let registry = &self.registry.by_subject;
        if let dashmap::mapref::entry::Entry::Occupied(mut entry) =
            registry.entry(self.subject.clone())
        {
            entry
                .get_mut()
                .retain(|(session, _)| *session != self.session);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_subjects_sessions_are_told_and_leaving_cleans_up() {
        let registry = Arc::new(Disconnects::default());
        let inboxes: Vec<Arc<Inbox>> = (0..3).map(|_| Arc::new(Inbox::new())).collect();
        let alice = [
            registry.register("alice", 1, &inboxes[0]),
            registry.register("alice", 2, &inboxes[1]),
        ];
        let _bob = registry.register("bob", 3, &inboxes[2]);
        assert_eq!(registry.disconnect("alice"), 2);
        let taken = |inbox: &Arc<Inbox>| inbox.take(&mut Vec::new());
        assert!(taken(&inboxes[0]) && taken(&inboxes[1]));
        assert!(!taken(&inboxes[2]));
        drop(alice);
        assert_eq!(registry.disconnect("alice"), 0);
        assert!(!registry.by_subject.contains_key("alice"));
    }
}
