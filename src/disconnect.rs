//! Who to close when the server API disconnects a user: each token subject's sessions,
//! and one signal per session.
//!
//! The request reaches every instance through Redis (`redis` routes the control channel
//! here); each closes its own sessions of that subject with 4003 `disconnected`.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::tape::SessionId;

#[derive(Default)]
pub struct Disconnects {
    by_subject: DashMap<String, Vec<(SessionId, Arc<Notify>)>>,
}

impl Disconnects {
    /// Registers a session of `subject` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, subject: &str, session: SessionId) -> Registration {
        let signal = Arc::new(Notify::new());
        self.by_subject
            .entry(subject.to_owned())
            .or_default()
            .push((session, signal.clone()));
        Registration {
            registry: self.clone(),
            subject: subject.to_owned(),
            session,
            signal,
        }
    }

    /// Tells every local session of `subject` to close; returns how many.
    pub fn disconnect(&self, subject: &str) -> usize {
        let Some(sessions) = self.by_subject.get(subject) else {
            return 0;
        };
        for (_, signal) in sessions.iter() {
            // A permit is kept if the session is not waiting right now.
            signal.notify_one();
        }
        sessions.len()
    }
}

/// A session's place in the registry; dropping it removes the session.
pub struct Registration {
    registry: Arc<Disconnects>,
    subject: String,
    session: SessionId,
    signal: Arc<Notify>,
}

impl Registration {
    /// Resolves when the session's user is disconnected.
    pub async fn disconnected(&self) {
        self.signal.notified().await
    }
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
    use futures_util::FutureExt;

    #[test]
    fn only_the_subjects_sessions_are_told_and_leaving_cleans_up() {
        let registry = Arc::new(Disconnects::default());
        let alice = [registry.register("alice", 1), registry.register("alice", 2)];
        let bob = registry.register("bob", 3);
        assert_eq!(registry.disconnect("alice"), 2);
        for session in &alice {
            assert!(session.disconnected().now_or_never().is_some());
        }
        assert!(bob.disconnected().now_or_never().is_none());
        drop(alice);
        assert_eq!(registry.disconnect("alice"), 0);
        assert!(!registry.by_subject.contains_key("alice"));
    }
}
