//! One master's subscriber connection in a Redis Cluster: SSUBSCRIBE and SUNSUBSCRIBE of
//! the channels it owns, one command per channel, pipelined (a multi-channel SSUBSCRIBE is
//! refused as CROSSSLOT once its channels span slots, and redis-rs pairs one reply per
//! command: research notes 4.2). Its publications go to the intake every link shares; its
//! end, and a `sunsubscribe` the master sends unasked (the channel's slot moved), go to
//! the events the subscriber follows.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::super::intake::Intake;
use super::super::io::Io;
use super::super::reconcile::{patient, BatchError, BATCH};

/// A link: its master's address, and which of the links to it (a replaced link's late
/// events must not touch its successor).
pub type LinkId = (Arc<str>, u64);

/// What a link reports beside its publications.
#[derive(Debug)]
pub enum Event {
    /// The connection to this master ended.
    Lost(LinkId),
    /// The master dropped this (Redis) channel, unasked: its slot moved.
    Dropped(LinkId, Vec<u8>),
    /// The same while a command was in flight: redis-rs 1.8.1 takes such a push as that
    /// command's reply, so every reply after it on the link is off by one
    /// (tests/it/cluster.rs pins this). The link must be replaced.
    Confused(LinkId),
}

/// What the link and its push sender share.
#[derive(Default)]
struct Shared {
    /// Commands awaiting their reply.
    in_flight: AtomicUsize,
    /// Channels Herald is unsubscribing: their `sunsubscribe` is the answer it asked for.
    leaving: Mutex<HashSet<Vec<u8>>>,
}

/// Counts a command in flight for as long as it lives.
struct Flight(Arc<Shared>);

impl Flight {
    fn new(shared: &Arc<Shared>) -> Flight {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        Flight(shared.clone())
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The push sender of one link, called on the io thread.
struct Pushes {
    intake: Arc<Intake>,
    id: LinkId,
    events: UnboundedSender<Event>,
    shared: Arc<Shared>,
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let event = match info.kind {
            PushKind::SMessage | PushKind::Message => {
                self.intake.push_message(info.data);
                return Ok(());
            }
            PushKind::SUnsubscribe => match info.data.into_iter().next() {
                Some(Value::BulkString(channel)) => {
                    let asked = self
                        .shared
                        .leaving
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&channel);
                    if asked {
                        return Ok(());
                    }
                    if self.shared.in_flight.load(Ordering::SeqCst) > 0 {
                        Event::Confused(self.id.clone())
                    } else {
                        Event::Dropped(self.id.clone(), channel)
                    }
                }
                _ => return Ok(()),
            },
            PushKind::Disconnection => Event::Lost(self.id.clone()),
            _ => return Ok(()),
        };
        // The subscriber gone (its receiver dropped): this link is being let go anyway.
        let _ = self.events.send(event);
        Ok(())
    }
}

pub struct Link {
    pub addr: Arc<str>,
    pub serial: u64,
    conn: MultiplexedConnection,
    shared: Arc<Shared>,
}

impl Link {
    /// Connects to the master `client` points at (RESP3).
    pub async fn connect(
        io: &Io,
        client: &redis::Client,
        addr: Arc<str>,
        serial: u64,
        intake: &Arc<Intake>,
        events: &UnboundedSender<Event>,
        timeout: Duration,
    ) -> Result<Link, BatchError> {
        let shared = Arc::new(Shared::default());
        let pushes = Pushes {
            intake: intake.clone(),
            id: (addr.clone(), serial),
            events: events.clone(),
            shared: shared.clone(),
        };
        let connecting = io.connect_with(client, pushes, timeout);
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(BatchError::Redis(e)),
            Err(_) => return Err(BatchError::Timeout(timeout)),
        };
        Ok(Link {
            addr,
            serial,
            conn,
            shared,
        })
    }

    /// SSUBSCRIBEs `channels` (Redis names), each confirmed.
    pub async fn subscribe(
        &mut self,
        channels: &[String],
        intake: &Intake,
        timeout: Duration,
    ) -> Result<(), BatchError> {
        self.each("SSUBSCRIBE", channels, intake, timeout).await
    }

    /// SUNSUBSCRIBEs `channels` (Redis names), each confirmed.
    pub async fn unsubscribe(
        &mut self,
        channels: &[String],
        intake: &Intake,
        timeout: Duration,
    ) -> Result<(), BatchError> {
        self.shared
            .leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(channels.iter().map(|c| c.as_bytes().to_vec()));
        self.each("SUNSUBSCRIBE", channels, intake, timeout).await
    }

    /// Subscribes the control channel, a classic one: a Cluster delivers a PUBLISH to
    /// every node, so one link carries it.
    pub async fn subscribe_control(
        &mut self,
        control: &str,
        intake: &Intake,
        timeout: Duration,
    ) -> Result<(), BatchError> {
        let _flight = Flight::new(&self.shared);
        patient(intake, timeout, self.conn.subscribe(control)).await
    }

    /// FUNCTION LOAD REPLACE of Herald's library on this master (RESP3 takes commands on a
    /// connection that subscribes; nothing is published on it).
    pub async fn load_library(
        &mut self,
        source: &str,
        intake: &Intake,
        timeout: Duration,
    ) -> Result<(), BatchError> {
        let _flight = Flight::new(&self.shared);
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(source);
        patient(intake, timeout, cmd.query_async::<Value>(&mut self.conn))
            .await
            .map(drop)
    }

    /// A PING in subscribed mode (see `Reconciler::probe`).
    pub async fn probe(&self, intake: &Intake, deadline: Duration) -> Result<(), BatchError> {
        let mut conn = self.conn.clone();
        let _flight = Flight::new(&self.shared);
        let ping = redis::cmd("PING");
        patient(intake, deadline, ping.query_async::<Value>(&mut conn))
            .await
            .map(drop)
    }

    async fn each(
        &mut self,
        command: &str,
        channels: &[String],
        intake: &Intake,
        timeout: Duration,
    ) -> Result<(), BatchError> {
        for batch in channels.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for channel in batch {
                pipe.cmd(command).arg(channel);
            }
            let _flight = Flight::new(&self.shared);
            let reply = pipe.query_async::<Vec<Value>>(&mut self.conn);
            patient(intake, timeout, reply).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sunsubscribe(channel: &[u8]) -> PushInfo {
        PushInfo {
            kind: PushKind::SUnsubscribe,
            data: vec![Value::BulkString(channel.to_vec()), Value::Int(0)],
        }
    }

    #[test]
    fn a_sunsubscribe_is_asked_for_a_move_or_a_confused_link() {
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let pushes = Pushes {
            intake: Intake::new(Box::new(|_, _, _| {})),
            id: ("n:1".into(), 7),
            events,
            shared: shared.clone(),
        };
        // Asked for: nothing to report.
        shared.leaving.lock().unwrap().insert(b"a".to_vec());
        pushes.send(sunsubscribe(b"a")).unwrap();
        assert!(received.try_recv().is_err());
        // Unasked, nothing in flight: the channel moved.
        pushes.send(sunsubscribe(b"b")).unwrap();
        assert!(matches!(received.try_recv(), Ok(Event::Dropped(_, c)) if c == b"b"));
        // Unasked while a command waits: its reply is taken, the link is confused.
        let flight = Flight::new(&shared);
        pushes.send(sunsubscribe(b"c")).unwrap();
        assert!(matches!(received.try_recv(), Ok(Event::Confused((_, 7)))));
        drop(flight);
        assert_eq!(shared.in_flight.load(Ordering::SeqCst), 0);
    }
}
