//! The history side of a tape: a history channel's order (`history::sequence`) meets its
//! subscribers here. A fill after Herald's own Redis drop, a new channel's anchor, and a
//! client's resume from an offset, from memory or joined to one history read.

use std::sync::Arc;

use super::{Cursor, SessionId, State, Tape};
use crate::history::sequence::{Read, Sequence};
use crate::history::Position;
use crate::inbox::Inbox;
use crate::payload::Frame;

/// What a tape can do for a client resuming from an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Its cursor now stands right after the offset.
    Recovered,
    /// History cannot cover it (another epoch, too old, or no history): live from now.
    NotRecovered,
    /// Only a read of Redis can tell (older than the tape holds, or the tape is being
    /// filled or anchored).
    NeedRedis,
}

/// How a history read joins the tape for a resume.
#[derive(Debug)]
pub enum Joined {
    /// These frames first, then the tape from the cursor.
    Yes(Vec<Frame>),
    /// These frames (up to the number given) join nothing the tape still holds: read
    /// again from there.
    Behind(u64, Vec<Frame>),
    /// History and the tape do not meet: not recovered.
    Hole,
}

/// What a fill or anchor put on the tape.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filled {
    /// Publications taken from history.
    pub publications: u64,
    /// `gap` frames, counted once per subscriber that gets one.
    pub gaps: u64,
}

impl Tape {
    /// Whether a history read can be answered for this tape now: anchored, and not
    /// waiting for a fill. Always true for a channel without history.
    pub fn is_settled(&self) -> bool {
        self.lock()
            .sequence
            .as_ref()
            .is_none_or(Sequence::is_settled)
    }

    /// Where a fill must read from: `None` when there is nothing to fill (no history,
    /// or not anchored yet, which calls for `anchor` instead).
    pub fn fill_after(&self) -> Option<u64> {
        self.lock().sequence.as_ref()?.fill_after()
    }

    /// Holds live publications until `end_fill` (the subscriber connection is being
    /// re-established).
    pub fn begin_fill(&self) {
        if let Some(sequence) = &mut self.lock().sequence {
            sequence.begin_fill();
        }
    }

    /// Appends what a history read (from `fill_after`) found missing, then the held
    /// publications; see `Sequence::end_fill`.
    pub fn end_fill(self: &Arc<Self>, read: &Read) -> Filled {
        let mut state = self.lock();
        let mut out = Vec::new();
        let Some(sequence) = &mut state.sequence else {
            return Filled::default();
        };
        let publications = sequence.end_fill(read, &mut out);
        let (_, gaps, woken) = self.put(&mut state, out, true);
        drop(state);
        woken.tell(self);
        Filled { publications, gaps }
    }

    /// Anchors a newly subscribed history channel at the position `read` found.
    pub fn anchor(self: &Arc<Self>, read: &Read) -> Filled {
        let mut state = self.lock();
        let mut out = Vec::new();
        if let Some(sequence) = &mut state.sequence {
            sequence.anchor(read, &mut out);
        }
        let (_, gaps, woken) = self.put(&mut state, out, false);
        drop(state);
        woken.tell(self);
        Filled {
            publications: 0,
            gaps,
        }
    }

    /// A subscriber was promised delivery while Redis could not anchor the channel: its
    /// anchor will send a `gap`.
    pub fn owe_gap(&self) {
        if let Some(sequence) = &mut self.lock().sequence {
            sequence.owe_gap();
        }
    }

    /// The offset a subscriber at `cursor` stands after: the publication before the first
    /// one it will read. `None` when that cannot be said: no history, not settled, frames
    /// it has not read fell off, or a `gap` lies ahead of it (its numbers may belong to
    /// another epoch than the sequence's, and a resume from before it would hide the gap).
    pub fn offset_at(&self, cursor: Cursor) -> Option<Position> {
        let state = self.lock();
        let sequence = state.sequence.as_ref().filter(|s| s.is_settled())?;
        let epoch = sequence.epoch()?.clone();
        let from = cursor.checked_sub(state.first)? as usize;
        let mut ahead = state.frames.range(from.min(state.frames.len())..);
        let n = loop {
            match ahead.next() {
                None => break sequence.next()? - 1,
                Some(entry) if entry.number != 0 => break entry.number - 1,
                Some(entry) if !entry.frame.is_publication() => return None, // a gap
                Some(_) => {} // a plain publication: numbers nothing
            }
        };
        Some(Position { epoch, n })
    }

    /// Sets the cursor of `session` (which just joined) right after `since`, when the
    /// tape still holds what followed it.
    pub fn resume(
        self: &Arc<Self>,
        cursor: &mut Cursor,
        session: SessionId,
        inbox: &Arc<Inbox>,
        since: &Position,
    ) -> Resume {
        let mut state = self.lock();
        let Some(sequence) = &state.sequence else {
            return Resume::NotRecovered;
        };
        let Some(next) = sequence.next().filter(|_| sequence.is_settled()) else {
            return Resume::NeedRedis;
        };
        if sequence.epoch() != Some(&since.epoch) {
            return Resume::NotRecovered;
        }
        if since.n >= next {
            // Ahead of the tape: a forged offset, or publications still on their way on
            // the subscriber connection. Only Redis can tell which.
            return Resume::NeedRedis;
        }
        if since.n + 1 == next {
            return Resume::Recovered; // nothing missed: the cursor stays at the head
        }
        let wanted = since.n + 1;
        let oldest = state
            .frames
            .iter()
            .find(|e| e.number != 0)
            .map(|e| e.number);
        if oldest.is_none_or(|oldest| oldest > wanted) {
            return Resume::NeedRedis; // older than the tape holds
        }
        match state.frames.iter().position(|e| e.number == wanted) {
            // A frame about to fall off a full tape (a busy channel with a subscriber
            // behind) would be dropped before the session reads it: read Redis instead,
            // which puts the cursor near the newest.
            Some(at)
                if (at + self.capacity).saturating_sub(state.frames.len()) < self.capacity / 4 =>
            {
                Resume::NeedRedis
            }
            Some(at) => {
                self.place(&mut state, cursor, at, session, inbox);
                Resume::Recovered
            }
            // Behind a gap: the numbers before it are not this history's.
            None => Resume::NotRecovered,
        }
    }

    /// Completes a resume that needed Redis: `read` holds the entries after `since`.
    /// All of them go first (to be sent right after the `ok`), and the cursor moves to the
    /// tape's frame right after the last: close to the newest, so a busy channel's full
    /// tape does not drop it before the session reads it.
    pub fn resume_with(
        self: &Arc<Self>,
        cursor: &mut Cursor,
        session: SessionId,
        inbox: &Arc<Inbox>,
        since: &Position,
        read: &Read,
    ) -> Joined {
        let mut state = self.lock();
        let Some(sequence) = state.sequence.as_ref() else {
            return Joined::Hole;
        };
        let Some(next) = sequence.next() else {
            return Joined::Hole;
        };
        if sequence.epoch() != Some(&since.epoch) || read.epoch.as_ref() != Some(&since.epoch) {
            return Joined::Hole;
        }
        if since.n > read.top {
            return Joined::Hole; // an offset this history never reached
        }
        if since.n >= next {
            // The tape has not received the client's last publication yet: ask again
            // once it has.
            return Joined::Behind(since.n, Vec::new());
        }
        let mut frames = Vec::new();
        let mut last = since.n;
        for (n, frame) in read.entries.iter().filter(|(n, _)| *n > since.n) {
            if *n != last + 1 {
                return Joined::Hole;
            }
            frames.push(frame.clone());
            last = *n;
        }
        // Where the live stream takes over: the frame numbered `last + 1`, or the head
        // when the tape has nothing newer yet. The read may also be ahead of the tape
        // (publications still on their way on the subscriber connection): those come
        // live, so the read gives only what precedes the tape's next.
        let join = (last + 1).min(next);
        frames.truncate((join - since.n - 1) as usize);
        let at = match state.frames.iter().position(|e| e.number == join) {
            Some(at) => at,
            None if join == next => state.frames.len(),
            // The tape moved on past the read (a session slow to take its answer): a
            // second read from `last` can still join it.
            None if read.top > since.n => return Joined::Behind(last, frames),
            None => return Joined::Hole,
        };
        self.place(&mut state, cursor, at, session, inbox);
        Joined::Yes(frames)
    }

    /// Moves the cursor of a subscriber that has not read since it joined to `frames[at]`
    /// (`frames.len()`: the head), and tells it when there is something to read.
    fn place(
        self: &Arc<Self>,
        state: &mut State,
        cursor: &mut Cursor,
        at: usize,
        session: SessionId,
        inbox: &Arc<Inbox>,
    ) {
        *cursor = state.first + at as u64;
        if *cursor < state.head() && state.waiting.swap_remove(&session).is_some() {
            inbox.mark(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{texts, Reader};
    use super::*;
    use crate::history::Rule;

    fn rule(size: usize) -> Rule {
        Rule {
            pattern: "*".into(),
            size,
            ttl: std::time::Duration::from_secs(60),
        }
    }

    /// Publications numbered `numbers` in epoch "e", as the Redis reader hands them over.
    fn kept(numbers: impl IntoIterator<Item = u64>) -> Vec<(Option<(&'static str, u64)>, Frame)> {
        numbers
            .into_iter()
            .map(|n| (Some(("e", n)), Frame::from(n.to_string())))
            .collect()
    }

    fn at(n: u64) -> Position {
        Position {
            epoch: "e".into(),
            n,
        }
    }

    /// A history tape anchored at `top` in epoch "e" with one subscriber that read all.
    fn anchored(size: usize, capacity: usize, top: u64) -> (Arc<Tape>, Reader) {
        let tape = Arc::new(Tape::new(
            "c".into(),
            capacity,
            Some(&rule(size)),
            super::super::Budget::unlimited(),
        ));
        let reader = Reader::join(&tape, 1);
        let read = Read {
            epoch: Some("e".into()),
            top,
            entries: Vec::new(),
        };
        tape.anchor(&read);
        (tape, reader)
    }

    #[test]
    fn a_history_tape_resumes_from_memory_what_it_still_holds() {
        let (tape, mut reader) = anchored(3, 8, 0);
        tape.publish(kept(1..=5));
        reader.read(&tape);
        // Read by all, yet the last 3 (the history size) stay for resumes.
        let mut late = Reader::join(&tape, 2);
        assert_eq!(
            tape.resume(&mut late.cursor, 2, &late.inbox, &at(2)),
            Resume::Recovered
        );
        assert_eq!(late.read(&tape), (0, true), "told it has frames");
        assert_eq!(texts(&late.out), ["3", "4", "5"]);
        // Up to date: nothing to send, still recovered.
        let mut current = Reader::join(&tape, 3);
        assert_eq!(
            tape.resume(&mut current.cursor, 3, &current.inbox, &at(5)),
            Resume::Recovered
        );
        assert_eq!(current.read(&tape), (0, false));
        // Older than it holds: only Redis can tell. Another epoch: never.
        let mut old = Reader::join(&tape, 4);
        assert_eq!(
            tape.resume(&mut old.cursor, 4, &old.inbox, &at(1)),
            Resume::NeedRedis
        );
        let other = Position {
            epoch: "x".into(),
            n: 3,
        };
        assert_eq!(
            tape.resume(&mut old.cursor, 4, &old.inbox, &other),
            Resume::NotRecovered
        );
        // Ahead of the tape: Redis tells a forged offset from one still on its way.
        assert_eq!(
            tape.resume(&mut old.cursor, 4, &old.inbox, &at(9)),
            Resume::NeedRedis
        );
    }

    #[test]
    fn a_resume_from_redis_joins_the_tape_without_hole_or_repeat() {
        let (tape, mut reader) = anchored(2, 8, 0);
        tape.publish(kept(1..=6));
        reader.read(&tape); // the tape keeps 5 and 6
        let mut back = Reader::join(&tape, 2);
        assert_eq!(
            tape.resume(&mut back.cursor, 2, &back.inbox, &at(1)),
            Resume::NeedRedis
        );
        // Redis answers 2..=6 (read after the join); meanwhile 7 arrived live.
        tape.publish(kept([7]));
        let read = Read {
            epoch: Some("e".into()),
            top: 6,
            entries: kept(2..=6)
                .into_iter()
                .map(|(o, f)| (o.unwrap().1, f))
                .collect(),
        };
        let Joined::Yes(first) = tape.resume_with(&mut back.cursor, 2, &back.inbox, &at(1), &read)
        else {
            panic!("not recovered");
        };
        let first: Vec<&str> = first.iter().map(|f| f.as_str()).collect();
        assert_eq!(first, ["2", "3", "4", "5", "6"], "the whole read first");
        back.read(&tape);
        assert_eq!(
            texts(&back.out),
            ["7"],
            "then the tape, from right after it"
        );
        // A read ahead of the tape (8 and 9 still on their way live): it gives only what
        // precedes the tape's next, and the cursor waits at the head for the rest.
        let ahead = Read {
            epoch: Some("e".into()),
            top: 9,
            entries: kept(2..=9)
                .into_iter()
                .map(|(o, f)| (o.unwrap().1, f))
                .collect(),
        };
        let mut early = Reader::join(&tape, 4);
        let Joined::Yes(first) =
            tape.resume_with(&mut early.cursor, 4, &early.inbox, &at(1), &ahead)
        else {
            panic!("not recovered");
        };
        assert_eq!(first.len(), 6, "2..=7");
        tape.publish(kept([8, 9]));
        early.read(&tape);
        assert_eq!(texts(&early.out), ["8", "9"]);
        // A read that ends before what the tape holds asks for a second read from its end;
        // one with a hole in it cannot recover.
        let short = Read {
            epoch: Some("e".into()),
            top: 6,
            entries: vec![(2, Frame::from("2".to_string()))],
        };
        let mut other = Reader::join(&tape, 3);
        let joined = tape.resume_with(&mut other.cursor, 3, &other.inbox, &at(1), &short);
        assert!(matches!(joined, Joined::Behind(2, _)), "{joined:?}");
        let holed = Read {
            epoch: Some("e".into()),
            top: 6,
            entries: vec![
                (2, Frame::from("2".to_string())),
                (4, Frame::from("4".to_string())),
            ],
        };
        let joined = tape.resume_with(&mut other.cursor, 3, &other.inbox, &at(1), &holed);
        assert!(matches!(joined, Joined::Hole), "{joined:?}");
    }

    #[test]
    fn a_fill_puts_the_missed_before_the_held_for_every_subscriber() {
        let (tape, mut reader) = anchored(10, 8, 0);
        tape.publish(kept([1]));
        tape.begin_fill();
        assert!(!tape.is_settled());
        assert_eq!(tape.fill_after(), Some(1));
        tape.publish(kept([4, 5])); // live after resubscribing; 2 and 3 were missed
        let read = Read {
            epoch: Some("e".into()),
            top: 4,
            entries: kept(2..=4)
                .into_iter()
                .map(|(o, f)| (o.unwrap().1, f))
                .collect(),
        };
        let filled = tape.end_fill(&read);
        let expected = Filled {
            publications: 2,
            gaps: 0,
        };
        assert_eq!(filled, expected, "4 arrived live: history supplies 2 and 3");
        reader.read(&tape);
        assert_eq!(texts(&reader.out), ["1", "2", "3", "4", "5"]);
    }

    #[test]
    fn the_offset_at_a_cursor_is_the_publication_before_what_it_reads_next() {
        let (tape, mut reader) = anchored(8, 8, 4);
        assert_eq!(
            tape.offset_at(reader.cursor),
            Some(at(4)),
            "at the head: the top"
        );
        tape.publish(kept(5..=6));
        assert_eq!(
            tape.offset_at(reader.cursor),
            Some(at(4)),
            "5 is still to read"
        );
        reader.read(&tape);
        assert_eq!(tape.offset_at(reader.cursor), Some(at(6)));
        // A gap ahead (here: a number skipped) leaves the offset unknown.
        tape.publish(kept([8]));
        assert_eq!(tape.offset_at(reader.cursor), None);
        reader.read(&tape);
        assert_eq!(tape.offset_at(reader.cursor), Some(at(8)));
    }
}
