//! What a session asks of the Redis thread for a history channel, and the answer.
//!
//! A session never talks to Redis itself: it sends a request over a bounded queue and
//! waits, under a deadline, for the answer. A request the Redis thread cannot serve
//! (disconnected, queue full, deadline passed) is simply never answered: the sender is
//! dropped, and the session treats that as "Redis cannot tell now".

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::sequence::Read;
use crate::tape::Tape;

/// Requests waiting for the Redis thread, at most: a mass resume of this many clients of
/// one instance queues at once; beyond it a resume is answered `recovered: false`.
pub const QUEUE: usize = 65_536;

pub struct Request {
    pub tape: Arc<Tape>,
    pub need: Need,
    pub reply: oneshot::Sender<Answer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Answer once the channel is subscribed on Redis and anchored: from then on nothing
    /// published is missed (the first subscriber's `ok` waits for this).
    Settled,
    /// Once settled, the kept entries after this number.
    After(u64),
}

pub enum Answer {
    Settled,
    Read(Arc<Read>),
}

pub type Sender = mpsc::Sender<Request>;
pub type Receiver = mpsc::Receiver<Request>;

pub fn queue() -> (Sender, Receiver) {
    mpsc::channel(QUEUE)
}

/// Sends a request; the receiver resolves to `None` if it cannot be served.
pub fn ask(sender: &Sender, tape: &Arc<Tape>, need: Need) -> oneshot::Receiver<Answer> {
    let (reply, answer) = oneshot::channel();
    // A full queue drops the request, and with it `reply`: the answer is "cannot tell".
    let _ = sender.try_send(Request {
        tape: tape.clone(),
        need,
        reply,
    });
    answer
}
