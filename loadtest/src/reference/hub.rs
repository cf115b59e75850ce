//! Channel -> the clients subscribed to it: the record of what Redis must carry.
//!
//! `join` and `leave` say when a channel gains its first or loses its last subscriber,
//! which is when the caller sends SUBSCRIBE or UNSUBSCRIBE; entries never outlive their
//! last subscriber.

use std::collections::{HashMap, HashSet};

/// A client's slot index.
pub type ClientId = usize;

#[derive(Default)]
pub struct Hub {
    channels: HashMap<String, HashSet<ClientId>>,
}

impl Hub {
    /// Adds `client` to `channel`; true when the channel is new (SUBSCRIBE it).
    pub fn join(&mut self, channel: &str, client: ClientId) -> bool {
        match self.channels.get_mut(channel) {
            Some(subscribers) => {
                subscribers.insert(client);
                false
            }
            None => {
                self.channels
                    .insert(channel.to_owned(), HashSet::from([client]));
                true
            }
        }
    }

    /// Removes `client` from `channel`; true when it was the last (UNSUBSCRIBE it).
    pub fn leave(&mut self, channel: &str, client: ClientId) -> bool {
        let Some(subscribers) = self.channels.get_mut(channel) else {
            return false;
        };
        subscribers.remove(&client);
        if subscribers.is_empty() {
            self.channels.remove(channel);
            return true;
        }
        false
    }

    pub fn subscribers(&self, channel: &str) -> Option<&HashSet<ClientId>> {
        self.channels.get(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last() {
        let mut hub = Hub::default();
        assert!(hub.join("a", 1));
        assert!(!hub.join("a", 2));
        assert!(!hub.join("a", 2), "twice is once");
        assert!(!hub.leave("a", 1));
        assert!(hub.leave("a", 2));
        assert!(hub.subscribers("a").is_none());
        assert!(!hub.leave("a", 2), "unknown is fine");
    }
}
