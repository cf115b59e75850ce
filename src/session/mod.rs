//! One task per WebSocket connection: requests in, replies and publications out.
//!
//! The task owns the socket; the hub reaches it only through its inbox. Each turn of the
//! loop handles whichever comes first: drain (spread closes over the drain period), queued
//! publications (one batch, one flush), a client frame, or the heartbeat.

mod subscriptions;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::inbox::{Batch, Inbox};
use crate::metrics::Metrics;
use crate::protocol::{self, close, Code, Op, Refusal, Request};
pub use subscriptions::check as check_channels;
use subscriptions::Subscriptions;
use writer::{send_all, WriteError};

/// Per-connection limits and timings, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat: Duration,
    pub max_subscriptions: usize,
    pub queue_capacity: usize,
    pub write_timeout: Duration,
    pub drain_period: Duration,
}

/// What every session shares.
pub struct Shared {
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Cancelled when the instance starts draining.
    pub drain: CancellationToken,
    /// Tells sessions of different instances apart in `welcome`.
    instance: u32,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(
        hub: Arc<Hub>,
        metrics: Metrics,
        settings: Settings,
        drain: CancellationToken,
    ) -> Self {
        Shared {
            hub,
            metrics,
            settings,
            drain,
            instance: rand::rng().random(),
            next_id: AtomicU64::new(1),
        }
    }
}

/// How a session ended, and so how it closes.
enum End {
    /// The client closed or the connection broke: nothing more to send.
    Gone,
    GoingAway,
    SlowConsumer,
    HeartbeatTimeout,
    TooBig,
}

/// Runs one connection to its end. `initial` was checked before the upgrade.
pub async fn run<S>(mut ws: WebSocketStream<S>, initial: Vec<String>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &shared.settings;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let inbox = Arc::new(Inbox::new(settings.queue_capacity));
    let mut subs = Subscriptions::new(
        id,
        inbox.clone(),
        shared.hub.clone(),
        settings.max_subscriptions,
    );
    if let Err(refusal) = subs.subscribe(&None, &initial) {
        // Checked before the upgrade with the same rule, so this is a bug, not client input.
        tracing::error!(message = %refusal.message, "query channels refused after upgrade");
    }

    let session = format!("{:08x}-{id:x}", shared.instance);
    let heartbeat_secs = settings.heartbeat.as_secs_f64().ceil().max(1.0) as u64;
    let welcome = protocol::welcome(&session, heartbeat_secs, &subs.names());
    let end = match send_all(
        &mut ws,
        [Message::Text(welcome.into())],
        settings.write_timeout,
    )
    .await
    {
        Ok(()) => serve(&mut ws, &inbox, &mut subs, &shared).await,
        Err(WriteError::Stuck) => End::SlowConsumer,
        Err(WriteError::Broken) => End::Gone,
    };

    // Stop the fan-out reaching this client before anything else.
    let discarded = inbox.close();
    drop(subs);
    let code = match end {
        End::Gone => return,
        End::GoingAway => close::GOING_AWAY,
        End::HeartbeatTimeout => close::HEARTBEAT_TIMEOUT,
        End::TooBig => close::TOO_BIG,
        End::SlowConsumer => {
            shared
                .metrics
                .dropped_slow_consumer
                .inc_by(discarded as u64);
            close::SLOW_CONSUMER
        }
    };
    writer::close(&mut ws, code, settings.write_timeout).await;
}

async fn serve<S>(
    ws: &mut WebSocketStream<S>,
    inbox: &Inbox,
    subs: &mut Subscriptions,
    shared: &Shared,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &shared.settings;
    let mut batch = Batch::default();
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + settings.heartbeat, settings.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut close_at: Option<Instant> = None;

    loop {
        // Biased, with publications last: a steady stream keeps the inbox always ready,
        // and must not starve client requests, the heartbeat or the drain.
        let written = tokio::select! {
            biased;
            _ = shared.drain.cancelled(), if close_at.is_none() => {
                // Spread the closes so clients do not all reconnect in the same instant.
                let spread = settings.drain_period.mul_f64(rand::rng().random_range(0.0..1.0));
                close_at = Some(Instant::now() + spread);
                continue;
            }
            _ = tokio::time::sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                return End::GoingAway;
            }
            incoming = ws.next() => {
                last_seen = Instant::now();
                let reply = match incoming {
                    None => return End::Gone,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        return End::TooBig;
                    }
                    Some(Err(_)) => return End::Gone,
                    Some(Ok(message)) => answer(message, subs),
                };
                match reply {
                    Some(text) => send_all(ws, [Message::Text(text.into())], settings.write_timeout).await,
                    None => Ok(()),
                }
            }
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > settings.heartbeat * 2 {
                    return End::HeartbeatTimeout;
                }
                send_all(ws, [Message::Ping(Default::default())], settings.write_timeout).await
            }
            _ = inbox.ready() => {
                inbox.drain(&mut batch);
                let lagged = batch
                    .missed
                    .drain(..)
                    .map(|(channel, missed)| Message::Text(protocol::lagged(&channel, missed).into()));
                let messages = batch.frames.drain(..).map(Message::Text).chain(lagged);
                send_all(ws, messages, settings.write_timeout).await
            }
        };
        match written {
            Ok(()) => {}
            Err(WriteError::Stuck) => return End::SlowConsumer,
            Err(WriteError::Broken) => return End::Gone,
        }
    }
}

/// The reply to one client frame, if it needs one.
fn answer(message: Message, subs: &mut Subscriptions) -> Option<String> {
    let text = match message {
        Message::Text(text) => text,
        Message::Binary(_) => {
            let refusal = Refusal::new(
                None,
                Code::BadRequest,
                "binary frames are not accepted; send JSON text",
            );
            return Some(protocol::error(&refusal));
        }
        // Pings are answered by tungstenite; pongs and closes only prove liveness here.
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return None,
    };
    let reply = match Request::parse(&text) {
        Err(refusal) => protocol::error(&refusal),
        Ok(Request { id, op: Op::Ping }) => protocol::pong(&id),
        Ok(Request {
            id,
            op: Op::Subscribe(names),
        }) => match subs.subscribe(&id, &names) {
            Ok(()) => protocol::ok(&id, &subs.names()),
            Err(refusal) => protocol::error(&refusal),
        },
        Ok(Request {
            id,
            op: Op::Unsubscribe(names),
        }) => {
            subs.unsubscribe(&names);
            protocol::ok(&id, &subs.names())
        }
    };
    Some(reply)
}
