//! One channel's recent publications, shared by its local subscribers.
//!
//! A publication is appended once; each subscriber reads from its own cursor. Only the
//! subscribers that have read everything wait to be told of the next publication, so a
//! publication touches them and no one else: a subscriber still behind finds the new
//! frames on its next read. The tape keeps the last `capacity` frames; a subscriber that
//! falls further behind loses the oldest and is told how many (`lagged`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use indexmap::IndexMap;

use crate::channel::Name;
use crate::hub::SessionId;
use crate::inbox::Inbox;
use crate::payload::Frame;

/// A position on a tape: the sequence number of the next frame to read.
pub type Cursor = u64;

pub struct Tape {
    name: Name,
    /// Most frames kept: how far a subscriber may fall behind before it loses frames.
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    /// Sequence number of `frames[0]`.
    first: Cursor,
    subscribers: usize,
    /// Subscribers that have read everything, to be woken by the next publication.
    waiting: IndexMap<SessionId, Arc<Inbox>>,
}

impl State {
    fn head(&self) -> Cursor {
        self.first + self.frames.len() as u64
    }

    /// Once every subscriber has read everything, nothing on the tape is needed.
    fn forget_if_all_read(&mut self) {
        if self.waiting.len() == self.subscribers {
            self.first = self.head();
            self.frames.clear();
        }
    }
}

impl Tape {
    pub fn new(name: Name, capacity: usize) -> Self {
        Tape {
            name,
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Adds a subscriber, which starts at the next publication; returns its cursor.
    pub fn join(&self, session: SessionId, inbox: &Arc<Inbox>) -> Cursor {
        let mut state = self.lock();
        state.subscribers += 1;
        state.waiting.insert(session, inbox.clone());
        state.head()
    }

    /// Removes a subscriber; returns how many are left.
    pub fn leave(&self, session: SessionId) -> usize {
        let mut state = self.lock();
        state.subscribers = state.subscribers.saturating_sub(1);
        state.waiting.swap_remove(&session);
        state.forget_if_all_read();
        state.subscribers
    }

    /// Appends `frames` (in order) and tells every waiting subscriber; returns the number
    /// of subscribers, each of which the frames now reach.
    pub fn append(self: &Arc<Self>, frames: impl IntoIterator<Item = Frame>) -> usize {
        let mut state = self.lock();
        state.frames.extend(frames);
        let over = state.frames.len().saturating_sub(self.capacity);
        if over > 0 {
            state.frames.drain(..over);
            state.first += over as u64;
        }
        for (_, inbox) in state.waiting.drain(..) {
            inbox.mark(self);
        }
        state.subscribers
    }

    /// Moves the frames after `cursor` into `out`, advances `cursor` to the end and puts
    /// the subscriber back among the waiting. Returns how many frames it missed: those
    /// that fell off the tape before it read them.
    pub fn read(
        &self,
        cursor: &mut Cursor,
        session: SessionId,
        inbox: &Arc<Inbox>,
        out: &mut VecDeque<Frame>,
    ) -> u64 {
        let mut state = self.lock();
        let missed = state.first.saturating_sub(*cursor);
        let from = cursor.saturating_sub(state.first) as usize;
        out.extend(state.frames.range(from.min(state.frames.len())..).cloned());
        *cursor = state.head();
        state.waiting.insert(session, inbox.clone());
        state.forget_if_all_read();
        missed
    }

    /// Frames after `cursor` still on the tape: what a subscriber leaving now never gets.
    pub fn unread(&self, cursor: Cursor) -> u64 {
        let state = self.lock();
        state.head().saturating_sub(cursor.max(state.first))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(texts: &[&str]) -> Vec<Frame> {
        texts.iter().map(|text| text.to_string().into()).collect()
    }

    fn texts(out: &VecDeque<Frame>) -> Vec<&str> {
        out.iter().map(|f| f.as_str()).collect()
    }

    struct Reader {
        id: SessionId,
        inbox: Arc<Inbox>,
        cursor: Cursor,
        out: VecDeque<Frame>,
    }

    impl Reader {
        fn join(tape: &Tape, id: SessionId) -> Reader {
            let inbox = Arc::new(Inbox::new());
            let cursor = tape.join(id, &inbox);
            Reader {
                id,
                inbox,
                cursor,
                out: VecDeque::new(),
            }
        }

        /// Reads; returns (missed, whether it had been told of news).
        fn read(&mut self, tape: &Tape) -> (u64, bool) {
            let mut pending = Vec::new();
            self.inbox.take(&mut pending);
            let missed = tape.read(&mut self.cursor, self.id, &self.inbox, &mut self.out);
            (missed, !pending.is_empty())
        }
    }

    #[test]
    fn each_subscriber_reads_every_frame_once_from_where_it_joined() {
        let tape = Arc::new(Tape::new("c".into(), 8));
        let mut early = Reader::join(&tape, 1);
        assert_eq!(tape.append(frames(&["1", "2"])), 1);
        let mut late = Reader::join(&tape, 2);
        assert_eq!(tape.append(frames(&["3"])), 2);

        assert_eq!(early.read(&tape), (0, true));
        assert_eq!(texts(&early.out), ["1", "2", "3"]);
        assert_eq!(late.read(&tape), (0, true));
        assert_eq!(texts(&late.out), ["3"]);

        // Nothing new: nothing read, and no one was told.
        assert_eq!(early.read(&tape), (0, false));
        assert_eq!(texts(&early.out), ["1", "2", "3"]);
        // Caught up, so told of the next one.
        tape.append(frames(&["4"]));
        assert_eq!(early.read(&tape), (0, true));
        assert_eq!(texts(&early.out), ["1", "2", "3", "4"]);
    }

    #[test]
    fn only_waiting_subscribers_are_told() {
        let tape = Arc::new(Tape::new("c".into(), 8));
        let mut reader = Reader::join(&tape, 1);
        tape.append(frames(&["1"]));
        tape.append(frames(&["2"]));
        let mut pending = Vec::new();
        reader.inbox.take(&mut pending);
        assert_eq!(pending.len(), 1, "told once, not once per publication");
        tape.read(&mut reader.cursor, 1, &reader.inbox, &mut reader.out);
        assert_eq!(texts(&reader.out), ["1", "2"]);
    }

    #[test]
    fn a_subscriber_too_far_behind_loses_the_oldest_and_counts_them() {
        let tape = Arc::new(Tape::new("c".into(), 3));
        let mut slow = Reader::join(&tape, 1);
        let mut fast = Reader::join(&tape, 2);
        tape.append(frames(&["1", "2"]));
        assert_eq!(fast.read(&tape).0, 0);
        tape.append(frames(&["3", "4", "5"]));
        assert_eq!(tape.unread(slow.cursor), 3);
        assert_eq!(slow.read(&tape).0, 2);
        assert_eq!(texts(&slow.out), ["3", "4", "5"]);
        assert_eq!(fast.read(&tape).0, 0);
        assert_eq!(texts(&fast.out), ["1", "2", "3", "4", "5"]);
    }

    #[test]
    fn frames_everyone_has_read_are_let_go() {
        let tape = Arc::new(Tape::new("c".into(), 8));
        let mut one = Reader::join(&tape, 1);
        let two = Reader::join(&tape, 2);
        tape.append(frames(&["1"]));
        one.read(&tape);
        assert_eq!(tape.unread(two.cursor), 1, "kept while one has not read it");
        assert_eq!(tape.leave(2), 1);
        assert_eq!(tape.lock().frames.len(), 0, "let go once all have read it");
        tape.append(frames(&["2"]));
        assert_eq!(one.read(&tape), (0, true));
        assert_eq!(texts(&one.out), ["1", "2"]);
    }
}
