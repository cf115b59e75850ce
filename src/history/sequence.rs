//! One history channel's order: turns live publications and history reads into one
//! stream without holes or repeats, or says where a hole could not be filled (`gap`).
//!
//! Every kept publication has a dense number, so the next expected one is known. Live
//! publications come in Redis's order on one connection, so on a healthy connection each
//! is the next one. After the subscriber connection was lost, a fill reads what was
//! missed from history; live publications arriving meanwhile are held, then follow the
//! history, each number once (Centrifuge's merge, research notes 1.4, done per channel
//! for all local subscribers instead of per client).

use super::offset::Epoch;
use crate::payload::Frame;

/// What a history read found: the channel's epoch (`None`: no history in Redis at all),
/// its last number, and the kept entries asked for, in order, already encoded.
#[derive(Debug, Default)]
pub struct Read {
    pub epoch: Option<Epoch>,
    pub top: u64,
    pub entries: Vec<(u64, Frame)>,
}

/// What goes on the tape, in order.
#[derive(Debug)]
pub enum Out {
    /// A publication and its number.
    Frame(u64, Frame),
    /// Publications may be missing here: subscribers get `gap`.
    Gap,
}

#[derive(Debug, Default)]
pub struct Sequence {
    /// The epoch of the numbers below; `None` until one is known.
    epoch: Option<Epoch>,
    /// The number expected next; `None` until anchored (by a read or a first publication).
    next: Option<u64>,
    /// Live publications that arrived during a fill, kept and plain alike, in Redis's
    /// order: they follow what the fill reads from history.
    held: Vec<(Option<(Epoch, u64)>, Frame)>,
    filling: bool,
    /// Some subscriber was promised delivery before the channel was anchored (Redis was
    /// down): whatever happened before the anchor is unknown, so the anchor owes a gap.
    owes_gap: bool,
}

impl Sequence {
    pub fn epoch(&self) -> Option<&Epoch> {
        self.epoch.as_ref()
    }

    /// The number expected next, once anchored.
    pub fn next(&self) -> Option<u64> {
        self.next
    }

    /// Anchored and not filling: live publications go straight through.
    pub fn is_settled(&self) -> bool {
        self.next.is_some() && !self.filling
    }

    /// Where a fill should read from: the last number delivered (`None`: not anchored).
    pub fn fill_after(&self) -> Option<u64> {
        self.next.map(|next| next - 1)
    }

    pub fn owe_gap(&mut self) {
        self.owes_gap = true;
    }

    /// A live publication that was not kept (a plain PUBLISH on a history channel).
    pub fn plain(&mut self, frame: Frame, out: &mut Vec<Out>) {
        if self.filling {
            self.held.push((None, frame));
        } else {
            out.push(Out::Frame(0, frame));
        }
    }

    /// A live publication numbered `n` in `epoch`.
    pub fn live(&mut self, epoch: &str, n: u64, frame: Frame, out: &mut Vec<Out>) {
        if self.filling {
            self.held.push((Some((epoch.into(), n)), frame));
            return;
        }
        match self.next {
            Some(next) if self.epoch.as_deref() == Some(epoch) => {
                if n < next {
                    return; // already delivered (by a fill)
                }
                if n > next {
                    // A healthy connection skips nothing; say so rather than hide it.
                    out.push(Out::Gap);
                }
            }
            // Another epoch: the history this channel had is gone.
            Some(_) if self.epoch.is_some() => out.push(Out::Gap),
            // Anchored on a channel that had no history yet: its first publication.
            Some(next) if n > next => out.push(Out::Gap),
            _ => self.take_owed_gap(out),
        }
        self.epoch = Some(epoch.into());
        self.next = Some(n + 1);
        out.push(Out::Frame(n, frame));
    }

    /// The channel's position when it was first subscribed: what is published from now on
    /// is numbered after `top`.
    pub fn anchor(&mut self, read: &Read, out: &mut Vec<Out>) {
        if self.next.is_none() {
            self.epoch = read.epoch.clone();
            self.next = Some(read.top + 1);
            self.take_owed_gap(out);
        }
    }

    /// The subscriber connection is being re-established: hold live publications until
    /// `end_fill`.
    pub fn begin_fill(&mut self) {
        self.filling = true;
    }

    /// Delivers what `read` (taken after the channel was subscribed again, from
    /// `fill_after`) holds beyond what was delivered, then the held live publications;
    /// a hole neither covers becomes a `Gap`. Returns how many came from history.
    pub fn end_fill(&mut self, read: &Read, out: &mut Vec<Out>) -> u64 {
        self.filling = false;
        let Some(next) = self.next else {
            self.anchor(read, out);
            self.release_held(out);
            return 0;
        };
        let start = match &self.epoch {
            // History is behind what was delivered: a failover lost writes Herald had
            // seen live (replication is asynchronous), and the new master numbers again
            // from its top. Say so, and take its numbers from there: otherwise each new
            // publication up to the old `next` would be dropped as a repeat, unseen.
            Some(epoch) if read.epoch.as_ref() == Some(epoch) && read.top + 1 < next => {
                out.push(Out::Gap);
                read.top + 1
            }
            Some(epoch) if read.epoch.as_ref() == Some(epoch) => next,
            // Anchored before anything was ever published: nothing can have been missed
            // but what the read shows from the channel's first publication on.
            None if read.epoch.is_none() || read.top < next => {
                self.epoch = read.epoch.clone();
                self.release_held(out);
                return 0;
            }
            None if read.entries.first().is_some_and(|(n, _)| *n == next) => next,
            // The history was lost (a Redis restart without it) or replaced: whatever
            // was published in between is unknown. The new epoch follows from its start.
            _ => {
                out.push(Out::Gap);
                1
            }
        };
        self.epoch = read.epoch.clone();
        // The read was taken after the channel was subscribed again, so it also holds
        // kept publications that arrived live meanwhile. History supplies only what came
        // before the first of them: the rest follow in Redis's order, plain ones between.
        let until = self.held.iter().find_map(|(kept, _)| match kept {
            Some((epoch, n)) if read.epoch.as_ref() == Some(epoch) => Some(*n),
            _ => None,
        });
        let from_history = self.deliver(read, start, until, out);
        self.release_held(out);
        from_history
    }

    /// Delivers the entries of `read` numbered from `start` up to (not including)
    /// `until`, a `Gap` wherever numbers skip or, with no `until`, where the read ends
    /// before its top (trimmed or expired); returns how many.
    fn deliver(&mut self, read: &Read, start: u64, until: Option<u64>, out: &mut Vec<Out>) -> u64 {
        let (mut next, mut delivered) = (start, 0);
        for (n, frame) in &read.entries {
            if *n < next {
                continue;
            }
            if until.is_some_and(|until| *n >= until) {
                break;
            }
            if *n > next {
                out.push(Out::Gap);
            }
            out.push(Out::Frame(*n, frame.clone()));
            delivered += 1;
            next = n + 1;
        }
        let end = until.map_or(read.top, |until| until - 1);
        if end >= next {
            // Numbers exist that neither the read nor the live stream supplies.
            out.push(Out::Gap);
            next = end + 1;
        }
        self.next = Some(next);
        delivered
    }

    /// The held live publications, in order, after a fill.
    fn release_held(&mut self, out: &mut Vec<Out>) {
        for (kept, frame) in std::mem::take(&mut self.held) {
            match kept {
                Some((epoch, n)) => self.live(&epoch, n, frame, out),
                None => self.plain(frame, out),
            }
        }
    }

    fn take_owed_gap(&mut self, out: &mut Vec<Out>) {
        if std::mem::take(&mut self.owes_gap) {
            out.push(Out::Gap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Frame {
        Frame::from(format!("f{n}"))
    }

    /// The numbers (and gaps as 0) that reached `out`.
    fn seen(out: &[Out]) -> Vec<u64> {
        out.iter()
            .map(|o| match o {
                Out::Frame(n, _) => *n,
                Out::Gap => 0,
            })
            .collect()
    }

    fn read(epoch: &str, top: u64, numbers: impl IntoIterator<Item = u64>) -> Read {
        Read {
            epoch: Some(epoch.into()),
            top,
            entries: numbers.into_iter().map(|n| (n, frame(n))).collect(),
        }
    }

    fn anchored(epoch: &str, top: u64) -> Sequence {
        let mut seq = Sequence::default();
        seq.anchor(&read(epoch, top, []), &mut Vec::new());
        seq
    }

    #[test]
    fn live_publications_pass_in_order_and_repeats_are_dropped() {
        let mut seq = anchored("e", 4);
        let mut out = Vec::new();
        for n in [5, 6, 6, 7] {
            seq.live("e", n, frame(n), &mut out);
        }
        assert_eq!(seen(&out), [5, 6, 7]);
        assert_eq!(seq.next(), Some(8));
    }

    #[test]
    fn a_fill_delivers_the_missed_then_the_held_each_once() {
        let mut seq = anchored("e", 4);
        let mut out = Vec::new();
        seq.live("e", 5, frame(5), &mut out);
        seq.begin_fill();
        assert!(!seq.is_settled());
        // During the outage 6..=9 were published; after resubscribing 9 and 10 arrive live
        // before the read (taken after the subscribe) returns 6..=9.
        for n in [9, 10] {
            seq.live("e", n, frame(n), &mut out);
        }
        assert_eq!(seen(&out), [5], "held while filling");
        let got = seq.end_fill(&read("e", 9, 6..=9), &mut out);
        assert_eq!(got, 3, "9 comes live, where Redis put it");
        assert_eq!(seen(&out), [5, 6, 7, 8, 9, 10]);
        assert!(seq.is_settled());
    }

    #[test]
    fn plain_publications_keep_their_place_across_a_fill() {
        let mut seq = anchored("e", 4);
        seq.begin_fill();
        let mut out = Vec::new();
        // Redis's order after resubscribing: plain, kept 7, plain, kept 8; 5 and 6 were
        // missed; the read (after the subscribe) holds 5..=7.
        seq.plain(Frame::from("p1".to_string()), &mut out);
        seq.live("e", 7, frame(7), &mut out);
        seq.plain(Frame::from("p2".to_string()), &mut out);
        seq.live("e", 8, frame(8), &mut out);
        assert!(out.is_empty(), "all held while filling");
        assert_eq!(seq.end_fill(&read("e", 7, 5..=7), &mut out), 2);
        let order: Vec<String> = out
            .iter()
            .map(|o| match o {
                Out::Frame(0, f) => f.as_str().to_owned(),
                Out::Frame(n, _) => n.to_string(),
                Out::Gap => "gap".into(),
            })
            .collect();
        assert_eq!(order, ["5", "6", "p1", "7", "p2", "8"]);
    }

    #[test]
    fn history_that_does_not_reach_back_is_a_gap() {
        let mut seq = anchored("e", 4);
        seq.begin_fill();
        let mut out = Vec::new();
        // Size 3: 5 and 6 were trimmed away.
        seq.end_fill(&read("e", 9, 7..=9), &mut out);
        assert_eq!(seen(&out), [0, 7, 8, 9]);
        // Expired: numbers exist but no entry is left.
        seq.begin_fill();
        let mut out = Vec::new();
        seq.end_fill(&read("e", 12, []), &mut out);
        assert_eq!(seen(&out), [0]);
        assert_eq!(seq.next(), Some(13));
    }

    #[test]
    fn a_new_epoch_is_a_gap_and_numbering_follows_it() {
        let mut seq = anchored("old", 40);
        seq.begin_fill();
        let mut out = Vec::new();
        seq.live("new", 2, frame(2), &mut out);
        // The new epoch's history is whole from its start: it follows the gap.
        seq.end_fill(&read("new", 1, [1]), &mut out);
        assert_eq!(seen(&out), [0, 1, 2]);
        assert_eq!(seq.epoch().map(|e| &**e), Some("new"));
        // Redis came back empty: a gap, and numbering starts over.
        seq.begin_fill();
        let mut out = Vec::new();
        seq.end_fill(&Read::default(), &mut out);
        seq.live("newest", 1, frame(1), &mut out);
        assert_eq!(seen(&out), [0, 1]);
        // Live, without an outage: a new epoch is a gap too.
        let mut out = Vec::new();
        seq.live("newer", 1, frame(1), &mut out);
        assert_eq!(seen(&out), [0, 1]);
    }

    #[test]
    fn a_channel_never_published_misses_nothing() {
        let mut seq = Sequence::default();
        let mut out = Vec::new();
        seq.anchor(&Read::default(), &mut out);
        seq.begin_fill();
        // Its first publications happened during the outage: all in history.
        seq.end_fill(&read("e", 2, [1, 2]), &mut out);
        assert_eq!(seen(&out), [1, 2]);
        let mut seq = Sequence::default();
        seq.anchor(&Read::default(), &mut out);
        seq.begin_fill();
        let mut out = Vec::new();
        seq.end_fill(&Read::default(), &mut out);
        assert!(out.is_empty(), "still nothing published");
    }

    #[test]
    fn an_anchor_owed_a_gap_pays_it_once() {
        let mut seq = Sequence::default();
        seq.owe_gap();
        seq.begin_fill();
        let mut out = Vec::new();
        seq.live("e", 8, frame(8), &mut out);
        seq.end_fill(&read("e", 7, []), &mut out);
        assert_eq!(seen(&out), [0, 8]);
    }

    #[test]
    fn history_behind_what_was_delivered_is_a_gap_then_its_numbers_are_taken() {
        let mut seq = anchored("e", 4);
        let mut out = Vec::new();
        seq.live("e", 5, frame(5), &mut out);
        seq.live("e", 6, frame(6), &mut out);
        // The master died before 6 reached its replica; the promoted replica numbers the
        // next publication 6 again.
        seq.begin_fill();
        seq.live("e", 6, frame(6), &mut out);
        seq.end_fill(&read("e", 5, [5]), &mut out);
        assert_eq!(seen(&out), [5, 6, 0, 6]);
        assert_eq!(seq.next(), Some(7));
    }
}
