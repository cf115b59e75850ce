//! Where publications wait between the subscriber connection and the fan-out: bounded in
//! bytes, and timed.
//!
//! redis-rs reads the connection on a thread of its own (`io`) and hands each push to
//! `Sender`; the subscriber thread takes everything waiting at once. At the bound, the
//! push blocks that thread, so it stops reading the socket: the backlog then waits in the
//! kernel and in Redis, where `client-output-buffer-limit` sees it and cuts the
//! connection past it (the reconnect gap-fills), never in Herald's heap. redis-rs's own
//! PubSub forwarded through an unbounded queue that neither saw.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

/// Counted per publication beyond its channel and payload: the entry and its two buffers'
/// headers.
const OVERHEAD: usize = 64;

/// A publication as it came off the connection.
pub struct Arrived {
    pub at: Instant,
    pub channel: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Arrived {
    fn size(&self) -> usize {
        self.channel.len() + self.payload.len() + OVERHEAD
    }
}

/// One connection's intake.
pub struct Intake {
    state: Mutex<State>,
    /// Wakes a push blocked at the bound.
    room: Condvar,
    /// Wakes the taker.
    ready: Notify,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    waiting: Vec<Arrived>,
    bytes: usize,
    /// Publications pushed so far: a sign of life while replies wait behind them.
    arrivals: u64,
    /// The connection is gone (redis-rs's disconnection push).
    ended: bool,
    /// Nobody takes any more: pushes are dropped, never block.
    closed: bool,
}

impl Intake {
    pub fn new(max_bytes: usize) -> Arc<Intake> {
        Arc::new(Intake {
            state: Mutex::default(),
            room: Condvar::new(),
            ready: Notify::new(),
            max_bytes,
        })
    }

    /// Waits for publications and moves them all into `out` (empty), in arrival order.
    /// Returns false once the connection ended and nothing waits. Cancel-safe.
    pub async fn take(&self, out: &mut Vec<Arrived>) -> bool {
        loop {
            {
                let mut state = self.lock();
                if !state.waiting.is_empty() {
                    std::mem::swap(&mut state.waiting, out);
                    state.bytes = 0;
                    drop(state);
                    self.room.notify_one();
                    return true;
                }
                if state.ended {
                    return false;
                }
            }
            // A push between the check and here left a permit: no wake is lost.
            self.ready.notified().await;
        }
    }

    /// Publications pushed so far on this connection.
    pub fn arrivals(&self) -> u64 {
        self.lock().arrivals
    }

    /// The taker is gone: a push blocked at the bound returns, and later ones are dropped
    /// (their connection is being replaced; the reconnect gap-fills).
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
    }

    fn push(&self, arrived: Arrived) {
        let size = arrived.size();
        let mut state = self.lock();
        // An empty intake takes any one publication, however large.
        while !state.closed && state.bytes > 0 && state.bytes + size > self.max_bytes {
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.closed {
            return;
        }
        let was_empty = state.waiting.is_empty();
        state.bytes += size;
        state.arrivals += 1;
        state.waiting.push(arrived);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// A `message` (or a cluster's `smessage`) push's data: channel, then payload.
    pub(super) fn push_message(&self, data: Vec<Value>) {
        let at = Instant::now();
        let mut data = data.into_iter();
        if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (data.next(), data.next())
        {
            self.push(Arrived {
                at,
                channel,
                payload,
            });
        }
    }

    fn end(&self) {
        self.lock().ended = true;
        self.ready.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes the intake when the connection's reader goes, however it goes.
pub struct CloseOnDrop(pub Arc<Intake>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The push sender redis-rs calls, on the io thread, for every push of the connection.
pub struct Sender(pub Arc<Intake>);

impl AsyncPushSender for Sender {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => self.0.push_message(info.data),
            PushKind::Disconnection => self.0.end(),
            // Subscription confirmations: the reconciler gets them as its commands' replies.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn message(payload: &[u8]) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(b"c".to_vec()),
                Value::BulkString(payload.to_vec()),
            ],
        }
    }

    #[test]
    fn a_push_at_the_bound_waits_for_the_taker() {
        // Room for one publication of 100 bytes (with its channel and overhead), not two.
        let intake = Intake::new(100 + 1 + OVERHEAD + 50);
        let sender = Sender(intake.clone());
        sender.send(message(&[b'a'; 100])).unwrap();
        // The second push can only complete once the first is taken (without the bound it
        // would land beside it: tests/it/intake.rs shows what that costs).
        let pusher = std::thread::spawn(move || sender.send(message(&[b'b'; 100])).unwrap());
        let mut out = Vec::new();
        assert_eq!(intake.take(&mut out).now_or_never(), Some(true));
        assert_eq!(out.len(), 1, "never both at once: they do not fit together");
        pusher.join().unwrap();
        out.clear();
        assert_eq!(intake.take(&mut out).now_or_never(), Some(true));
        assert_eq!(out[0].payload, [b'b'; 100]);
    }

    #[test]
    fn closing_releases_a_blocked_push_and_the_end_is_seen_after_what_waits() {
        let intake = Intake::new(1);
        let sender = Sender(intake.clone());
        sender.send(message(b"first")).unwrap();
        let blocked = {
            let sender = Sender(intake.clone());
            std::thread::spawn(move || sender.send(message(b"dropped")).unwrap())
        };
        intake.close();
        blocked.join().unwrap();
        sender
            .send(PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            })
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(intake.take(&mut out).now_or_never(), Some(true));
        assert_eq!(out.len(), 1, "what was pushed before the close");
        out.clear();
        assert_eq!(intake.take(&mut out).now_or_never(), Some(false));
    }
}
