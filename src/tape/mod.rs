//! One channel's recent publications, shared by its local subscribers.
//!
//! A publication is appended once; each subscriber reads from its own cursor. Only the
//! subscribers that have read everything wait to be told of the next publication, so a
//! publication touches them and no one else: a subscriber still behind finds the new
//! frames on its next read. The tape keeps the last `capacity` frames; a subscriber that
//! falls further behind loses the oldest and is told how many (`lagged`).
//!
//! A history channel's tape also orders its publications by number (`history::sequence`)
//! and keeps its last frames after everyone read them, up to the history size: a client
//! resuming from an offset the tape still holds is served from memory, by setting its
//! cursor back, with no Redis read (a rolling restart moves thousands at once).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use indexmap::IndexMap;

use crate::channel::Name;
use crate::history::sequence::{Out, Sequence};
use crate::history::Rule;
use crate::inbox::Inbox;
use crate::payload::Frame;
use crate::protocol::{self, Code, Refusal};

mod history;

pub use history::{Filled, Joined, Resume};

/// Identifies a session among a tape's subscribers.
pub type SessionId = u64;

/// A position on a tape: the sequence number of the next frame to read.
pub type Cursor = u64;

/// How many bytes of frames tapes may keep, per channel and for the whole process: a
/// frame count alone lets 1,024 publications of 1 MB hold 1 GB for one channel. Beyond
/// either, a tape's oldest frames go (subscribers behind get `lagged`, as for the count).
#[derive(Debug)]
pub struct Budget {
    pub per_channel: usize,
    pub total: usize,
    /// What the tapes held as each last counted. Only an appending tape counts (and one
    /// that goes away), so readers on many cores never touch this shared counter; what
    /// readers let go is counted at the tape's next append.
    used: AtomicUsize,
}

impl Budget {
    pub fn new(per_channel: usize, total: usize) -> Self {
        Budget {
            per_channel,
            total,
            used: AtomicUsize::new(0),
        }
    }

    /// No limit beyond the frame count (tests).
    pub fn unlimited() -> Arc<Budget> {
        Arc::new(Budget::new(usize::MAX, usize::MAX))
    }

    /// Bytes the tapes hold, as last counted.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Moves `counted` (what a tape added to `used` before) to `now`.
    fn count(&self, counted: &mut usize, now: usize) {
        if now >= *counted {
            self.used.fetch_add(now - *counted, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(*counted - now, Ordering::Relaxed);
        }
        *counted = now;
    }
}

pub struct Tape {
    name: Name,
    budget: Arc<Budget>,
    /// Most frames kept: how far a subscriber may fall behind before it loses frames.
    capacity: usize,
    /// Frames a history channel keeps after every subscriber read them (0 otherwise).
    retain: usize,
    /// Redis refused the channel (an ACL): its subscribers were told and drop it.
    refused: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
}

impl Drop for Tape {
    fn drop(&mut self) {
        let state = self.lock();
        let mut counted = state.counted;
        self.budget.count(&mut counted, 0);
    }
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tape").field("name", &self.name).finish()
    }
}

/// Subscribers that read everything, by session. Session ids are small sequential numbers
/// chosen by Herald, so a fast non-keyed hash is safe; SipHash made the insert each read
/// does 3.2% of the server's instructions in a callgrind profile of `channels`.
type Waiting = IndexMap<SessionId, Arc<Inbox>, foldhash::fast::FixedState>;

/// The inboxes an append took off the waiting list, to mark once the tape's lock is
/// released: sessions reading this tape on other cores do not wait behind thousands of
/// marks (one shared publication in `channels` marks 5,000).
#[must_use = "the subscribers must be told"]
pub(crate) struct Woken(Vec<Arc<Inbox>>);

impl Woken {
    /// Marks every inbox; call with the tape's lock released.
    pub(crate) fn tell(self, tape: &Arc<Tape>) {
        for inbox in self.0 {
            inbox.mark(tape);
        }
    }
}

/// A frame on the tape and its publication number (0: none, e.g. a plain PUBLISH or a gap).
struct Entry {
    frame: Frame,
    number: u64,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Entry>,
    /// Sequence number of `frames[0]`.
    first: Cursor,
    subscribers: usize,
    /// Subscribers that have read everything, to be woken by the next publication.
    waiting: Waiting,
    /// The publication order of a history channel; `None` for other channels.
    sequence: Option<Sequence>,
    /// Bytes of the frames held.
    bytes: usize,
    /// What this tape last counted in its budget's `used`.
    counted: usize,
}

impl State {
    fn head(&self) -> Cursor {
        self.first + self.frames.len() as u64
    }

    /// Once every subscriber has read everything, only what a history channel retains
    /// is needed.
    fn forget_if_all_read(&mut self, retain: usize) {
        if self.waiting.len() == self.subscribers {
            self.drop_front(self.frames.len().saturating_sub(retain));
        }
    }

    fn push(&mut self, entry: Entry) {
        self.bytes += entry.frame.wire().len();
        self.frames.push_back(entry);
    }

    /// Publications after `cursor`: those still here, and every frame that fell off
    /// before it read them (its next read would report them as missed; a `gap` among
    /// those counts too, as it does in `lagged`).
    fn unread(&self, cursor: Cursor) -> u64 {
        let fallen = self.first.saturating_sub(cursor);
        let from = cursor.saturating_sub(self.first) as usize;
        let here = self.frames.range(from.min(self.frames.len())..);
        fallen + here.filter(|e| e.frame.is_publication()).count() as u64
    }

    /// Lets the oldest `n` frames go.
    fn drop_front(&mut self, n: usize) {
        for entry in self.frames.drain(..n) {
            self.bytes -= entry.frame.wire().len();
        }
        self.first += n as u64;
    }
}

impl Tape {
    /// A tape for channel `name`; `history` is its rule when it is a history channel.
    pub fn new(name: Name, capacity: usize, history: Option<&Rule>, budget: Arc<Budget>) -> Self {
        let capacity = capacity.max(1);
        Tape {
            name,
            budget,
            capacity,
            retain: history.map_or(0, |rule| rule.size.min(capacity)),
            refused: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                sequence: history.map(|_| Sequence::default()),
                ..State::default()
            }),
        }
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Local subscribers now.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers
    }

    pub fn is_history(&self) -> bool {
        self.lock().sequence.is_some()
    }

    /// Adds a subscriber, which starts at the next publication; returns its cursor.
    pub fn join(&self, session: SessionId, inbox: &Arc<Inbox>) -> Cursor {
        let mut state = self.lock();
        state.subscribers += 1;
        state.waiting.insert(session, inbox.clone());
        state.head()
    }

    /// Removes a subscriber at `cursor`; returns how many are left, and how many
    /// publications it never read (see `unread`), counted under the same lock as
    /// `publish` counts deliveries, so none slips between the two.
    pub fn leave(&self, session: SessionId, cursor: Cursor) -> (usize, u64) {
        let mut state = self.lock();
        let unread = state.unread(cursor);
        state.subscribers = state.subscribers.saturating_sub(1);
        state.waiting.swap_remove(&session);
        state.forget_if_all_read(self.retain);
        (state.subscribers, unread)
    }

    /// Appends live publications (in Redis's order, each with its offset when it has
    /// one) and tells every waiting subscriber; returns the deliveries made (frames
    /// appended x subscribers). On a history channel repeats are dropped and, during a
    /// fill, publications are held until it ends.
    pub fn publish<'a>(
        self: &Arc<Self>,
        items: impl IntoIterator<Item = (Option<(&'a str, u64)>, Frame)>,
    ) -> u64 {
        let mut state = self.lock();
        let number = |offset: Option<(&str, u64)>| offset.map_or(0, |(_, n)| n);
        let (frames, _, woken) = match &mut state.sequence {
            // The plain fan-out path: straight onto the tape, no list in between.
            None => {
                let items = items.into_iter();
                let out = items.map(|(offset, frame)| Out::Frame(number(offset), frame));
                self.put(&mut state, out, false)
            }
            Some(sequence) => {
                let mut out = Vec::new();
                for (offset, frame) in items {
                    match offset {
                        Some((epoch, n)) => sequence.live(epoch, n, frame, &mut out),
                        None => sequence.plain(frame, &mut out),
                    }
                }
                self.put(&mut state, out, false)
            }
        };
        let deliveries = frames * state.subscribers as u64;
        drop(state);
        woken.tell(self);
        deliveries
    }

    /// Tells every subscriber publications may have been missed (a channel without
    /// history, after the subscriber connection was lost); returns the `gap` frames sent.
    pub fn gap(self: &Arc<Self>) -> u64 {
        let mut state = self.lock();
        let (_, gaps, woken) = self.put(&mut state, vec![Out::Gap], false);
        drop(state);
        woken.tell(self);
        gaps
    }

    /// Redis refused the channel: every subscriber gets `error` (`forbidden`, with
    /// `reason`) and drops it when it reads (see `is_refused`).
    pub fn refuse(self: &Arc<Self>, reason: &str) {
        self.refused
            .store(true, std::sync::atomic::Ordering::Release);
        let refusal = Refusal::new(None, Code::Forbidden, format!("{}: {reason}", self.name));
        let mut state = self.lock();
        let (_, _, woken) = self.put(
            &mut state,
            [Out::Frame(0, protocol::error(&refusal).into())],
            false,
        );
        drop(state);
        woken.tell(self);
    }

    pub fn is_refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Puts `out` on the tape in order, drops what exceeds the capacity and tells the
    /// waiting subscribers off their list. Returns (publications appended, gap frames x
    /// subscribers, the subscribers to tell once the lock is released).
    ///
    /// A fill (`grow`) may take the tape past its capacity: after an outage longer than
    /// the capacity, every subscriber would otherwise get the missed publications as
    /// `lagged`. Later appends then drop no more than they add, so the excess goes as
    /// publications come or once everyone has read it: never more than a history size.
    fn put(
        self: &Arc<Self>,
        state: &mut State,
        out: impl IntoIterator<Item = Out>,
        grow: bool,
    ) -> (u64, u64, Woken) {
        let (mut frames, mut gaps) = (0, 0);
        for item in out {
            let entry = match item {
                Out::Frame(number, frame) => {
                    frames += 1;
                    Entry { frame, number }
                }
                Out::Gap => {
                    gaps += 1;
                    // Numbers before a gap may belong to another epoch: resume never
                    // looks behind it.
                    for earlier in state.frames.iter_mut() {
                        earlier.number = 0;
                    }
                    Entry {
                        frame: protocol::gap(&self.name).into(),
                        number: 0,
                    }
                }
            };
            state.push(entry);
        }
        if frames + gaps == 0 {
            return (0, 0, Woken(Vec::new()));
        }
        let added = (frames + gaps) as usize;
        let over = match grow {
            true => 0,
            false => state.frames.len().saturating_sub(self.capacity).min(added),
        };
        state.drop_front(over);
        // Bytes: this channel's share, then the process's; the newest frame always stays.
        let budget = &self.budget;
        let mut counted = state.counted;
        budget.count(&mut counted, state.bytes);
        while state.frames.len() > 1
            && (state.bytes > budget.per_channel || budget.used() > budget.total)
        {
            state.drop_front(1);
            budget.count(&mut counted, state.bytes);
        }
        state.counted = counted;
        let woken = Woken(state.waiting.drain(..).map(|(_, inbox)| inbox).collect());
        (frames, gaps * state.subscribers as u64, woken)
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
        let from = from.min(state.frames.len());
        out.extend(state.frames.range(from..).map(|e| e.frame.clone()));
        *cursor = state.head();
        state.waiting.insert(session, inbox.clone());
        state.forget_if_all_read(self.retain);
        missed
    }

    /// Publications after `cursor`: what a subscriber leaving now never gets.
    #[cfg(test)]
    pub fn unread(&self, cursor: Cursor) -> u64 {
        self.lock().unread(cursor)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(texts: &[&str]) -> Vec<(Option<(&'static str, u64)>, Frame)> {
        texts
            .iter()
            .map(|text| (None, text.to_string().into()))
            .collect()
    }

    pub(super) fn texts(out: &VecDeque<Frame>) -> Vec<&str> {
        out.iter().map(|f| f.as_str()).collect()
    }

    pub(super) struct Reader {
        pub(super) id: SessionId,
        pub(super) inbox: Arc<Inbox>,
        pub(super) cursor: Cursor,
        pub(super) out: VecDeque<Frame>,
    }

    impl Reader {
        pub(super) fn join(tape: &Tape, id: SessionId) -> Reader {
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
        pub(super) fn read(&mut self, tape: &Tape) -> (u64, bool) {
            let mut pending = Vec::new();
            let _ = self.inbox.take(&mut pending);
            let missed = tape.read(&mut self.cursor, self.id, &self.inbox, &mut self.out);
            (missed, !pending.is_empty())
        }
    }

    #[test]
    fn each_subscriber_reads_every_frame_once_from_where_it_joined() {
        let tape = Arc::new(Tape::new("c".into(), 8, None, Budget::unlimited()));
        let mut early = Reader::join(&tape, 1);
        assert_eq!(tape.publish(frames(&["1", "2"])), 2);
        let mut late = Reader::join(&tape, 2);
        assert_eq!(tape.publish(frames(&["3"])), 2);

        assert_eq!(early.read(&tape), (0, true));
        assert_eq!(texts(&early.out), ["1", "2", "3"]);
        assert_eq!(late.read(&tape), (0, true));
        assert_eq!(texts(&late.out), ["3"]);

        // Nothing new: nothing read, and no one was told.
        assert_eq!(early.read(&tape), (0, false));
        assert_eq!(texts(&early.out), ["1", "2", "3"]);
        // Caught up, so told of the next one.
        tape.publish(frames(&["4"]));
        assert_eq!(early.read(&tape), (0, true));
        assert_eq!(texts(&early.out), ["1", "2", "3", "4"]);
    }

    #[test]
    fn only_waiting_subscribers_are_told() {
        let tape = Arc::new(Tape::new("c".into(), 8, None, Budget::unlimited()));
        let mut reader = Reader::join(&tape, 1);
        tape.publish(frames(&["1"]));
        tape.publish(frames(&["2"]));
        let mut pending = Vec::new();
        let _ = reader.inbox.take(&mut pending);
        assert_eq!(pending.len(), 1, "told once, not once per publication");
        tape.read(&mut reader.cursor, 1, &reader.inbox, &mut reader.out);
        assert_eq!(texts(&reader.out), ["1", "2"]);
    }

    #[test]
    fn a_subscriber_too_far_behind_loses_the_oldest_and_counts_them() {
        let tape = Arc::new(Tape::new("c".into(), 3, None, Budget::unlimited()));
        let mut slow = Reader::join(&tape, 1);
        let mut fast = Reader::join(&tape, 2);
        tape.publish(frames(&["1", "2"]));
        assert_eq!(fast.read(&tape).0, 0);
        tape.publish(frames(&["3", "4", "5"]));
        assert_eq!(slow.read(&tape).0, 2);
        assert_eq!(texts(&slow.out), ["3", "4", "5"]);
        assert_eq!(fast.read(&tape).0, 0);
        assert_eq!(texts(&fast.out), ["1", "2", "3", "4", "5"]);
    }

    #[test]
    fn a_subscriber_leaving_counts_the_publications_it_never_read() {
        let tape = Arc::new(Tape::new("c".into(), 3, None, Budget::unlimited()));
        let slow = Reader::join(&tape, 1);
        let _other = Reader::join(&tape, 2);
        let publication = |n: u8| (None, crate::payload::message("c", &[b'0' + n], None));
        tape.publish((0..4).map(publication));
        // Not a publication: not counted while on the tape.
        tape.gap();
        assert_eq!(
            tape.unread(slow.cursor),
            2 + 2,
            "fallen off, and still here"
        );
        assert_eq!(tape.leave(1, slow.cursor), (1, 4));
    }

    #[test]
    fn a_byte_budget_lets_the_oldest_go_per_channel_and_for_the_process() {
        // Frames of 1,000 text bytes are 1,004 bytes on the wire; 3 fit in 3,100.
        let big = |n: u8| {
            vec![(
                None,
                Frame::from(char::from(b'a' + n).to_string().repeat(1000)),
            )]
        };
        let budget = Arc::new(Budget::new(3_100, 5_000));
        let one = Arc::new(Tape::new("one".into(), 100, None, budget.clone()));
        let mut slow = Reader::join(&one, 1);
        for n in 0..10 {
            one.publish(big(n));
        }
        assert_eq!(budget.used(), 3 * 1_004, "this channel's share");
        assert_eq!(slow.read(&one).0, 7, "the oldest went");
        assert_eq!(slow.out.len(), 3);
        // Another channel: together they may hold 5,000 bytes, so 4 frames in all.
        let two = Arc::new(Tape::new("two".into(), 100, None, budget.clone()));
        let other = Reader::join(&two, 2);
        let again = Reader::join(&one, 3);
        one.publish(big(0));
        for n in 0..3 {
            two.publish(big(n));
        }
        assert!(budget.used() <= 5_000, "{}", budget.used());
        // Inboxes hold marked tapes: drop the readers too.
        drop((one, two, slow, other, again));
        assert_eq!(
            budget.used(),
            0,
            "a tape that goes gives back what it counted"
        );
    }

    #[test]
    fn frames_everyone_has_read_are_let_go() {
        let tape = Arc::new(Tape::new("c".into(), 8, None, Budget::unlimited()));
        let mut one = Reader::join(&tape, 1);
        let two = Reader::join(&tape, 2);
        tape.publish(frames(&["1"]));
        one.read(&tape);
        assert_eq!(
            tape.lock().frames.len(),
            1,
            "kept while one has not read it"
        );
        assert_eq!(tape.leave(2, two.cursor).0, 1);
        assert_eq!(tape.lock().frames.len(), 0, "let go once all have read it");
        tape.publish(frames(&["2"]));
        assert_eq!(one.read(&tape), (0, true));
        assert_eq!(texts(&one.out), ["1", "2"]);
    }
}
