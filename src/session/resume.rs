//! The seam of a subscribe on history channels: what the `ok` must wait for, and what
//! follows it.
//!
//! A first subscriber's `ok` waits until Redis confirmed the SUBSCRIBE and the channel is
//! anchored, so nothing published after the `ok` can be missed (contract 1.1; "the
//! first-subscriber window"). A resume (`since`) is served from the channel's tape when it
//! still holds what followed the offset; otherwise from one history read, whose entries go
//! out right after the `ok`, then the tape from its oldest frame: the read was taken after
//! the subscription was in place and the tape has held every live publication since the
//! join, so together they leave no hole, and numbers drop what both hold.
//!
//! The wait is bounded (`HERALD_REDIS_TIMEOUT`); while Redis is down nothing can be read:
//! a resume then answers `recovered: false`, and a first subscriber's channel owes a
//! `gap`, sent when Redis anchors it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::subscriptions::Subscriptions;
use crate::history::request::{self, Answer, Need, Sender};
use crate::history::Position;
use crate::metrics::Metrics;
use crate::payload::Frame;
use crate::protocol::{self, Id};
use crate::tape::{Joined, Resume, Tape};

/// A subscribe whose `ok` waits for the Redis thread.
pub struct Pending {
    id: Id,
    /// History frames of channels already joined while others read again.
    ready: Vec<Frame>,
    /// Each channel joined that is named in `since` or keeps history: the `ok` says
    /// whether the first were recovered, and where the client stands on the second.
    channels: Vec<Joining>,
    waits: Vec<Wait>,
}

struct Joining {
    tape: Arc<Tape>,
    since: Option<Position>,
    /// For a channel named in `since`: whether it was recovered, once known.
    recovered: Option<bool>,
}

struct Wait {
    tape: Arc<Tape>,
    since: Option<Position>,
    answer: oneshot::Receiver<Answer>,
    /// History frames from earlier reads of this resume, to go first.
    carried: Vec<Frame>,
    /// Reads asked so far.
    reads: u8,
}

/// Reads one resume may ask for: a session that takes its answer too late to join the
/// tape (the channel moved on past the read) reads again from where that read ended.
const MAX_READS: u8 = 3;

/// The answers a `Pending` waited for, in its order (`None`: Redis could not tell).
pub struct Answers(Vec<Option<Answer>>);

/// What a subscribe that joined `joined` needs before its `ok`: nothing (the reply is
/// ready) or a wait.
pub fn plan(
    subs: &mut Subscriptions,
    id: Id,
    joined: &[Arc<Tape>],
    since: Vec<(String, Position)>,
    history: &Sender,
    metrics: &Metrics,
) -> Result<String, Pending> {
    let mut channels = Vec::new();
    let mut waits = Vec::new();
    for tape in joined {
        let asked = since.iter().find(|(name, _)| **name == **tape.name());
        if asked.is_some() || tape.is_history() {
            channels.push(Joining {
                tape: tape.clone(),
                since: asked.map(|(_, position)| position.clone()),
                recovered: None,
            });
        }
        let mut known = |recovered| channels.last_mut().expect("pushed").recovered = recovered;
        let need = match asked {
            Some((_, position)) => match subs.resume(tape, position) {
                Resume::Recovered => {
                    known(Some(true));
                    continue;
                }
                Resume::NotRecovered => {
                    known(Some(false));
                    continue;
                }
                Resume::NeedRedis => Need::After(position.n),
            },
            None if tape.is_history() && !tape.is_settled() => Need::Settled,
            None => continue,
        };
        waits.push(Wait {
            tape: tape.clone(),
            since: asked.map(|(_, position)| position.clone()),
            answer: request::ask(history, tape, need),
            carried: Vec::new(),
            reads: 1,
        });
    }
    let pending = Pending {
        id,
        ready: Vec::new(),
        channels,
        waits,
    };
    if pending.waits.is_empty() {
        pending.count(metrics);
        Ok(pending.reply(subs))
    } else {
        Err(pending)
    }
}

impl Pending {
    /// Waits for every answer, all within `deadline`.
    pub async fn wait(mut self, deadline: Duration) -> (Pending, Answers) {
        let all = async {
            let mut answers = Vec::with_capacity(self.waits.len());
            for wait in &mut self.waits {
                answers.push((&mut wait.answer).await.ok());
            }
            answers
        };
        let answers = match tokio::time::timeout(deadline, all).await {
            Ok(answers) => answers,
            Err(_) => self
                .waits
                .iter_mut()
                .map(|w| w.answer.try_recv().ok())
                .collect(),
        };
        (self, Answers(answers))
    }

    /// The `ok` and the history frames that follow it, once the answers are in; or, when
    /// some resume must read again, the same subscribe still waiting.
    pub fn finish(
        mut self,
        subs: &mut Subscriptions,
        Answers(answers): Answers,
        history: &Sender,
        metrics: &Metrics,
    ) -> Result<(String, Vec<Frame>), Pending> {
        let mut again = Vec::new();
        let mut frames = Vec::new();
        for (mut wait, answer) in std::mem::take(&mut self.waits).into_iter().zip(answers) {
            let Some(since) = wait.since.clone() else {
                if answer.is_none() {
                    wait.tape.owe_gap();
                }
                continue;
            };
            let joined = match &answer {
                Some(Answer::Read(read)) => subs.resume_with(&wait.tape, &since, read),
                _ => Joined::Hole,
            };
            let ok = match joined {
                Joined::Yes(got) => {
                    frames.append(&mut wait.carried);
                    frames.extend(got);
                    true
                }
                Joined::Behind(last, got) if wait.reads < MAX_READS => {
                    wait.carried.extend(got);
                    wait.since = Some(Position {
                        epoch: since.epoch.clone(),
                        n: last,
                    });
                    wait.answer = request::ask(history, &wait.tape, Need::After(last));
                    wait.reads += 1;
                    again.push(wait);
                    continue;
                }
                Joined::Behind(..) | Joined::Hole => false,
            };
            if let Some(channel) = self
                .channels
                .iter_mut()
                .find(|c| c.recovered.is_none() && Arc::ptr_eq(&c.tape, &wait.tape))
            {
                channel.recovered = Some(ok);
            }
        }
        if !again.is_empty() {
            // The frames of the channels already joined wait with the rest: the `ok` comes
            // first, once.
            self.waits = again;
            self.ready.append(&mut frames);
            return Err(self);
        }
        self.count(metrics);
        let mut all = std::mem::take(&mut self.ready);
        all.append(&mut frames);
        Ok((self.reply(subs), all))
    }

    fn count(&self, metrics: &Metrics) {
        for channel in self.channels.iter().filter(|c| c.since.is_some()) {
            match channel.recovered {
                Some(true) => metrics.recoveries_recovered.inc(),
                _ => metrics.recoveries_not_recovered.inc(),
            }
        }
    }

    fn reply(&self, subs: &Subscriptions) -> String {
        let mut recovered = Vec::new();
        let mut offsets = Vec::new();
        for Joining {
            tape,
            since,
            recovered: known,
        } in &self.channels
        {
            let name = tape.name().to_string();
            if since.is_some() {
                recovered.push((name.clone(), known.unwrap_or(false)));
            }
            if !tape.is_history() {
                continue;
            }
            // A recovered channel stands where the client said; any other starts live at
            // its cursor (a resume that failed included: that is its new starting point).
            let at = match since {
                Some(since) if *known == Some(true) => Some(since.clone()),
                _ => subs.offset(tape),
            };
            if let Some(at) = at {
                offsets.push((name, at.to_string()));
            }
        }
        protocol::ok_subscribed(&self.id, &subs.names(), &recovered, &offsets)
    }
}
