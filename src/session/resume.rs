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
use crate::tape::{Resume, Tape};

/// A subscribe whose `ok` waits for the Redis thread.
pub struct Pending {
    id: Id,
    /// One entry per channel named in `since`, in the request's order; `None` until known.
    recovered: Vec<(String, Option<bool>)>,
    waits: Vec<Wait>,
}

struct Wait {
    tape: Arc<Tape>,
    since: Option<Position>,
    answer: oneshot::Receiver<Answer>,
}

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
    let mut recovered: Vec<(String, Option<bool>)> = Vec::with_capacity(since.len());
    let mut waits = Vec::new();
    for tape in joined {
        let asked = since.iter().find(|(name, _)| **name == **tape.name());
        let need = match asked {
            Some((name, position)) => match subs.resume(tape, position) {
                Resume::Recovered => {
                    recovered.push((name.clone(), Some(true)));
                    continue;
                }
                Resume::NotRecovered => {
                    recovered.push((name.clone(), Some(false)));
                    continue;
                }
                Resume::NeedRedis => {
                    recovered.push((name.clone(), None));
                    Need::After(position.n)
                }
            },
            None if tape.is_history() && !tape.is_settled() => Need::Settled,
            None => continue,
        };
        waits.push(Wait {
            tape: tape.clone(),
            since: asked.map(|(_, position)| position.clone()),
            answer: request::ask(history, tape, need),
        });
    }
    let pending = Pending {
        id,
        recovered,
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

    /// The `ok` and the history frames that follow it, once the answers are in.
    pub fn finish(
        mut self,
        subs: &mut Subscriptions,
        Answers(answers): Answers,
        metrics: &Metrics,
    ) -> (String, Vec<Frame>) {
        let mut frames = Vec::new();
        for (wait, answer) in std::mem::take(&mut self.waits).into_iter().zip(answers) {
            let Some(since) = &wait.since else {
                if answer.is_none() {
                    wait.tape.owe_gap();
                }
                continue;
            };
            let got = match &answer {
                Some(Answer::Read(read)) => subs.resume_with(&wait.tape, since, read),
                _ => None,
            };
            let ok = got.is_some();
            frames.extend(got.into_iter().flatten());
            if let Some(slot) = self
                .recovered
                .iter_mut()
                .find(|(name, known)| known.is_none() && **name == **wait.tape.name())
            {
                slot.1 = Some(ok);
            }
        }
        self.count(metrics);
        (self.reply(subs), frames)
    }

    fn count(&self, metrics: &Metrics) {
        for (_, known) in &self.recovered {
            match known {
                Some(true) => metrics.recoveries_recovered.inc(),
                _ => metrics.recoveries_not_recovered.inc(),
            }
        }
    }

    fn reply(&self, subs: &Subscriptions) -> String {
        if self.recovered.is_empty() {
            return protocol::ok(&self.id, &subs.names());
        }
        let recovered: Vec<(String, bool)> = self
            .recovered
            .iter()
            .map(|(name, known)| (name.clone(), known.unwrap_or(false)))
            .collect();
        protocol::ok_recovered(&self.id, &subs.names(), &recovered)
    }
}
