//! One client's bounded queue of outgoing publications.
//!
//! The fan-out pushes into it without ever waiting: when the queue is full the frame is
//! dropped and counted against its channel, and the session later tells the client with
//! `lagged`. The session drains it whole, so a burst costs one lock and one wake.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::channel::Name;
use crate::payload::Frame;

/// The outcome of offering a frame to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue held `capacity` frames; this one was dropped and counted as missed.
    Full,
    /// The session is gone or going; nothing was queued.
    Closed,
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

    /// Offers a frame without blocking; called on the Redis read path.
    pub fn push(&self, channel: &Name, frame: &Frame) -> Push {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closed {
            return Push::Closed;
        }
        if state.frames.len() >= self.capacity {
            match state.missed.iter_mut().find(|(name, _)| name == channel) {
                Some((_, count)) => *count += 1,
                None => state.missed.push((channel.clone(), 1)),
            }
            // A full queue means a wake is already pending; no need for another.
            return Push::Full;
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame.clone());
        drop(state);
        // Only the push that makes the queue non-empty wakes the session: it drains
        // everything queued after it too.
        if was_empty {
            self.ready.notify_one();
        }
        Push::Queued
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

    fn frame(text: &str) -> Frame {
        text.to_string().into()
    }

    #[test]
    fn full_queue_drops_and_counts_per_channel() {
        let inbox = Inbox::new(2);
        let (a, b): (Name, Name) = ("a".into(), "b".into());
        assert_eq!(inbox.push(&a, &frame("1")), Push::Queued);
        assert_eq!(inbox.push(&a, &frame("2")), Push::Queued);
        assert_eq!(inbox.push(&a, &frame("3")), Push::Full);
        assert_eq!(inbox.push(&b, &frame("4")), Push::Full);
        assert_eq!(inbox.push(&a, &frame("5")), Push::Full);

        let mut batch = Batch::default();
        inbox.drain(&mut batch);
        let texts: Vec<&str> = batch.frames.iter().map(|f| f.as_str()).collect();
        assert_eq!(texts, ["1", "2"]);
        assert_eq!(batch.missed, vec![(a.clone(), 2), (b, 1)]);

        batch = Batch::default();
        inbox.drain(&mut batch);
        assert!(batch.frames.is_empty() && batch.missed.is_empty());
    }

    #[test]
    fn closed_inbox_refuses_and_reports_discards() {
        let inbox = Inbox::new(8);
        let a: Name = "a".into();
        inbox.push(&a, &frame("1"));
        inbox.push(&a, &frame("2"));
        assert_eq!(inbox.close(), 2);
        assert_eq!(inbox.push(&a, &frame("3")), Push::Closed);
    }

    #[tokio::test]
    async fn first_push_wakes_the_reader() {
        let inbox = std::sync::Arc::new(Inbox::new(8));
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.ready().await }
        });
        inbox.push(&"a".into(), &frame("1"));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
