//! Where publications go as the subscriber connection reads them: straight to the
//! fan-out, on the thread that reads the socket.
//!
//! The fan-out never waits for a client (it appends to a tape and marks the inboxes of
//! subscribers that had read everything), so it runs inside redis-rs's push callback on
//! the io thread. While it runs the connection is not read: a backlog waits in the kernel
//! and in Redis, where `client-output-buffer-limit` sees it and cuts the connection past
//! it (the reconnect gap-fills), never in Herald's heap.
//!
//! Publications used to wait here in a queue bounded in bytes, taken by the subscriber
//! thread. That hand-over woke a second thread for every publication that arrived alone,
//! which is most of them when each channel is quiet: in the `channels` scenario (5,000
//! clients, 2,000 publications/s spread over their own channels) the io, subscriber and
//! runtime threads made 39,000 voluntary context switches in 10 s, against 3,800 for the
//! one-thread reference server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

/// Fans out one publication: its Redis channel, its payload, when it was read.
pub type Deliver = Box<dyn Fn(&[u8], &[u8], Instant) + Send + Sync>;

/// One connection's publications (or a Cluster's links', together).
pub struct Intake {
    deliver: Deliver,
    /// Publications fanned out so far: a sign of life while replies wait behind them.
    arrivals: AtomicU64,
    /// The connection is being replaced: its late publications are dropped (the next
    /// connection's resubscribe gap-fills).
    closed: AtomicBool,
    /// The connection is gone (redis-rs's disconnection push).
    ended: AtomicBool,
    end: Notify,
}

impl Intake {
    pub fn new(deliver: Deliver) -> Arc<Intake> {
        Arc::new(Intake {
            deliver,
            arrivals: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            end: Notify::new(),
        })
    }

    /// Resolves once the connection ended. Cancel-safe.
    pub async fn ended(&self) {
        // `end` stores a permit when no one waits: an end between the check and the wait
        // is not missed.
        while !self.ended.load(Ordering::Acquire) {
            self.end.notified().await;
        }
    }

    /// Publications fanned out so far on this connection.
    pub fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }

    /// Later publications are dropped (their connection is being replaced).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// A `message` (or a cluster's `smessage`) push's data: channel, then payload.
    pub(super) fn push_message(&self, data: Vec<Value>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let at = Instant::now();
        let mut data = data.into_iter();
        if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (data.next(), data.next())
        {
            self.arrivals.fetch_add(1, Ordering::Relaxed);
            (self.deliver)(&channel, &payload, at);
        }
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.end.notify_one();
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
    use std::sync::Mutex;

    fn message(payload: &[u8]) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(b"c".to_vec()),
                Value::BulkString(payload.to_vec()),
            ],
        }
    }

    /// The payloads an intake fanned out.
    type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

    /// An intake recording what it fans out.
    fn recording() -> (Arc<Intake>, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let intake = Intake::new(Box::new({
            let seen = seen.clone();
            move |channel: &[u8], payload: &[u8], _| {
                assert_eq!(channel, b"c");
                seen.lock().unwrap().push(payload.to_vec());
            }
        }));
        (intake, seen)
    }

    #[test]
    fn each_publication_is_fanned_out_as_it_is_read_in_order() {
        let (intake, seen) = recording();
        let sender = Sender(intake.clone());
        sender.send(message(b"1")).unwrap();
        sender.send(message(b"2")).unwrap();
        // Before anything awaits: nothing waits in between.
        assert_eq!(*seen.lock().unwrap(), [b"1".to_vec(), b"2".to_vec()]);
        assert_eq!(intake.arrivals(), 2);
    }

    #[test]
    fn a_closed_intake_drops_late_publications_and_the_end_is_seen() {
        let (intake, seen) = recording();
        let sender = Sender(intake.clone());
        sender.send(message(b"first")).unwrap();
        assert!(intake.ended().now_or_never().is_none(), "not ended yet");
        intake.close();
        sender.send(message(b"dropped")).unwrap();
        sender
            .send(PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            })
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), [b"first".to_vec()]);
        assert_eq!(intake.ended().now_or_never(), Some(()));
    }
}
