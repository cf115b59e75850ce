//! One master's subscriber connection in a Redis Cluster: SSUBSCRIBE and SUNSUBSCRIBE of
//! the channels it owns, one command per channel, pipelined (a multi-channel SSUBSCRIBE is
//! refused as CROSSSLOT once its channels span slots, and redis-rs pairs one reply per
//! command: research notes 4.2). Its publications go to the intake every link shares; its
//! end, and a `sunsubscribe` the master sends unasked (the channel's slot moved), go to
//! the events the subscriber follows.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::super::intake::Intake;
use super::super::io::Io;
use super::super::reconcile::{patient, BatchError, BATCH};

/// What a link reports beside its publications.
#[derive(Debug)]
pub enum Event {
    /// The connection to this master ended.
    Lost(Arc<str>),
    /// The master dropped this (Redis) channel: its slot moved, or Herald asked.
    Dropped(Arc<str>, Vec<u8>),
}

/// The push sender of one link, called on the io thread.
struct Pushes {
    intake: Arc<Intake>,
    addr: Arc<str>,
    events: UnboundedSender<Event>,
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let event = match info.kind {
            PushKind::SMessage | PushKind::Message => {
                self.intake.push_message(info.data);
                return Ok(());
            }
            PushKind::SUnsubscribe => match info.data.into_iter().next() {
                Some(Value::BulkString(channel)) => Event::Dropped(self.addr.clone(), channel),
                _ => return Ok(()),
            },
            PushKind::Disconnection => Event::Lost(self.addr.clone()),
            _ => return Ok(()),
        };
        // The subscriber gone (its receiver dropped): this link is being let go anyway.
        let _ = self.events.send(event);
        Ok(())
    }
}

pub struct Link {
    pub addr: Arc<str>,
    conn: MultiplexedConnection,
}

impl Link {
    /// Connects to the master `client` points at (RESP3).
    pub async fn connect(
        io: &Io,
        client: &redis::Client,
        addr: Arc<str>,
        intake: &Arc<Intake>,
        events: &UnboundedSender<Event>,
        timeout: Duration,
    ) -> Result<Link, BatchError> {
        let pushes = Pushes {
            intake: intake.clone(),
            addr: addr.clone(),
            events: events.clone(),
        };
        let connecting = io.connect_with(client, pushes, timeout);
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(BatchError::Redis(e)),
            Err(_) => return Err(BatchError::Timeout(timeout)),
        };
        Ok(Link { addr, conn })
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
        patient(intake, timeout, self.conn.subscribe(control)).await
    }

    /// A PING in subscribed mode (see `Reconciler::probe`).
    pub async fn probe(&self, intake: &Intake, deadline: Duration) -> Result<(), BatchError> {
        let mut conn = self.conn.clone();
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
            let reply = pipe.query_async::<Vec<Value>>(&mut self.conn);
            patient(intake, timeout, reply).await?;
        }
        Ok(())
    }
}
