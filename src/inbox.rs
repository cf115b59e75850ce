//! One client's bounded queue of outgoing publications.
//!
//! The fan-out pushes into it without ever waiting: frames that do not fit are dropped and
//! counted against their channel, and the session later tells the client with `lagged`.
//! The fan-out pushes a run of publications at once and the session drains it whole, so
//! a burst costs one lock and one wake on each side.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::channel::Name;
use crate::payload::Frame;

/// The outcome of offering frames to a client. A closed inbox (the session is gone or
/// going) queues and drops nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub queued: u64,
    /// Frames beyond `capacity`, dropped and counted as missed.
    pub dropped: u64,
}

/// What the session takes from the inbox in one go.
#[derive(Default)]
pub struct Batch {
    pub frames: VecDeque<Frame>,
    /// Publications dropped per channel since the last drain.
    pub missed: Vec<(Name, u64)>,
}

pub struct Inbox {
    state: Mutex<State>,
    ready: Notify,
    /// Most frames held at once; the bound on a slow client's memory.
    capacity: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    missed: Vec<(Name, u64)>,
    closed: bool,
}

impl Inbox {
    pub fn new(capacity: usize) -> Self {
        Inbox {
            state: Mutex::default(),
            ready: Notify::new(),
            capacity,
        }
    }

    /// Offers `frames` (one channel's, in order) without blocking; called on the Redis
    /// read path.
    pub fn push(&self, channel: &Name, frames: &[Frame]) -> Pushed {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closed {
            return Pushed::default();
        }
        let was_empty = state.frames.is_empty();
        let room = self.capacity.saturating_sub(state.frames.len());
        let (fits, over) = frames.split_at(room.min(frames.len()));
        state.frames.extend(fits.iter().cloned());
        if !over.is_empty() {
            let over = over.len() as u64;
            match state.missed.iter_mut().find(|(name, _)| name == channel) {
                Some((_, count)) => *count += over,
                None => state.missed.push((channel.clone(), over)),
            }
        }
        drop(state);
        // Only the push that makes the queue non-empty wakes the session: it drains
        // everything queued after it too. (A full queue has a wake pending already.)
        if was_empty && !fits.is_empty() {
            self.ready.notify_one();
        }
        Pushed {
            queued: fits.len() as u64,
            dropped: over.len() as u64,
        }
    }

    /// Resolves when frames may be waiting. Cancel-safe: an unconsumed wake is kept.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Moves everything queued into `batch`, whose buffers are reused between drains.
    pub fn drain(&self, batch: &mut Batch) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut state.frames, &mut batch.frames);
        std::mem::swap(&mut state.missed, &mut batch.missed);
    }

    /// Refuses further pushes and discards what is queued; returns how many frames that was.
    pub fn close(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        state.missed.clear();
        std::mem::take(&mut state.frames).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(texts: &[&str]) -> Vec<Frame> {
        texts.iter().map(|text| text.to_string().into()).collect()
    }

    fn pushed(queued: u64, dropped: u64) -> Pushed {
        Pushed { queued, dropped }
    }

    #[test]
    fn full_queue_drops_and_counts_per_channel() {
        let inbox = Inbox::new(3);
        let (a, b): (Name, Name) = ("a".into(), "b".into());
        assert_eq!(inbox.push(&a, &frames(&["1"])), pushed(1, 0));
        assert_eq!(inbox.push(&a, &frames(&["2", "3", "4"])), pushed(2, 1));
        assert_eq!(inbox.push(&b, &frames(&["5"])), pushed(0, 1));
        assert_eq!(inbox.push(&a, &frames(&["6", "7"])), pushed(0, 2));

        let mut batch = Batch::default();
        inbox.drain(&mut batch);
        let texts: Vec<&str> = batch.frames.iter().map(|f| f.as_str()).collect();
        assert_eq!(texts, ["1", "2", "3"]);
        assert_eq!(batch.missed, vec![(a.clone(), 3), (b, 1)]);

        batch = Batch::default();
        inbox.drain(&mut batch);
        assert!(batch.frames.is_empty() && batch.missed.is_empty());
    }

    #[test]
    fn closed_inbox_refuses_and_reports_discards() {
        let inbox = Inbox::new(8);
        let a: Name = "a".into();
        inbox.push(&a, &frames(&["1", "2"]));
        assert_eq!(inbox.close(), 2);
        assert_eq!(inbox.push(&a, &frames(&["3"])), Pushed::default());
    }

    #[tokio::test]
    async fn first_push_wakes_the_reader() {
        let inbox = std::sync::Arc::new(Inbox::new(8));
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.ready().await }
        });
        inbox.push(&"a".into(), &frames(&["1"]));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
