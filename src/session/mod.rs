//! One task per WebSocket connection: requests in, replies and publications out.
//!
//! The task owns the socket; the hub reaches it only through its inbox. Each turn of the
//! loop handles whichever comes first: drain (spread closes over the drain period), token
//! expiry, a client frame, the heartbeat, or queued publications (one batch, one flush).

mod clock;
mod readable;
mod requests;
mod resume;
mod subscriptions;
mod writer;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Grant};
use crate::disconnect::Disconnects;
use crate::history::request::Sender as HistoryRequests;
use crate::hub::Hub;
use crate::inbox::{Batch, Inbox};
use crate::metrics::Metrics;
use crate::protocol::{self, close};
use clock::{Deadlines, Due};
pub use readable::Gated;
pub use requests::RateSettings;
use requests::{Requests, Verdict};
use subscriptions::Subscriptions;
pub use subscriptions::{check as check_channels, Limits};
use writer::{send_all, send_batch, WriteError};

/// How long a client closed for silence gets to answer the close frame.
const DEAD_CLIENT_GRACE: Duration = Duration::from_secs(1);

/// Per-connection limits and timings, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat: Duration,
    pub limits: Limits,
    pub write_timeout: Duration,
    pub drain_period: Duration,
    pub rate: RateSettings,
    /// Longest a subscribe's `ok` waits for Redis (history channels).
    pub history_wait: Duration,
}

/// What every session shares.
pub struct Shared {
    pub hub: Arc<Hub>,
    pub auth: Arc<Auth>,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Cancelled when the instance starts draining.
    pub drain: CancellationToken,
    /// Requests to the Redis thread for history channels.
    pub history: HistoryRequests,
    /// Sessions by token subject, for the server API's disconnect.
    pub disconnects: Arc<Disconnects>,
    /// Tells sessions of different instances apart in `welcome`.
    instance: u32,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(
        hub: Arc<Hub>,
        auth: Arc<Auth>,
        metrics: Metrics,
        settings: Settings,
        drain: CancellationToken,
        history: HistoryRequests,
        disconnects: Arc<Disconnects>,
    ) -> Self {
        Shared {
            history,
            disconnects,
            hub,
            auth,
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
    RateLimited,
    TokenExpired,
    Disconnected,
    BadUtf8,
    ProtocolError,
}

/// Runs one connection to its end. `initial` and `grant` were checked before the upgrade.
pub async fn run<S>(
    mut ws: WebSocketStream<Gated<S>>,
    initial: Vec<String>,
    grant: Grant,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &shared.settings;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let inbox = Arc::new(Inbox::new());
    // Held for the session's life: the server API's disconnect finds it by its subject.
    let _registration = grant
        .subject
        .as_deref()
        .map(|subject| shared.disconnects.register(subject, id, &inbox));
    let subs = Subscriptions::new(id, inbox.clone(), shared.hub.clone(), settings.limits);
    let mut requests = Requests::new(
        subs,
        grant,
        shared.auth.clone(),
        settings.rate,
        shared.history.clone(),
        shared.metrics.clone(),
    );
    match requests.subscribe_initial(&initial) {
        Ok(None) => {}
        Ok(Some(pending)) => {
            // Only waits (no `since` here, so no second round); the `welcome` below lists
            // the channels.
            let (pending, answers) = pending.wait(settings.history_wait).await;
            let _ = requests.finish(pending, answers);
        }
        // Checked before the upgrade with the same rule, so this is a bug, not client input.
        Err(refusal) => {
            tracing::error!(message = %refusal.message, "query channels refused after upgrade")
        }
    }

    let session = format!("{:08x}-{id:x}", shared.instance);
    let heartbeat_secs = settings.heartbeat.as_secs_f64().ceil().max(1.0) as u64;
    let welcome = protocol::welcome(
        &session,
        heartbeat_secs,
        &requests.subs.names(),
        &requests.subs.offsets(),
    );
    let mut batch = Batch::default();
    let end = match send_all(
        &mut ws,
        [Message::Text(welcome.into())],
        settings.write_timeout,
    )
    .await
    {
        Ok(()) => serve(&mut ws, &inbox, &mut batch, &mut requests, &shared).await,
        Err(WriteError::Stuck) => End::SlowConsumer,
        Err(WriteError::Broken) => End::Gone,
    };

    // Stop the fan-out reaching this client before anything else.
    inbox.close();
    let mut discarded = requests.subs.leave_all();
    drop(requests);
    // What a write cut short: the frame already on its way must be finished, the rest
    // is dropped with the queue.
    let started = batch.frames.front().is_some_and(|frame| frame.started());
    let unfinished = started.then(|| batch.frames.pop_front()).flatten();
    let cut_publication = unfinished.as_ref().is_some_and(|f| f.is_publication());
    discarded += batch.frames.iter().filter(|f| f.is_publication()).count() as u64;
    let code = match end {
        End::Gone => return,
        End::GoingAway => close::GOING_AWAY,
        End::HeartbeatTimeout => close::HEARTBEAT_TIMEOUT,
        End::TooBig => close::TOO_BIG,
        End::RateLimited => close::RATE_LIMITED,
        End::TokenExpired => close::TOKEN_EXPIRED,
        End::Disconnected => close::DISCONNECTED,
        End::BadUtf8 => close::BAD_UTF8,
        End::ProtocolError => close::PROTOCOL_ERROR,
        End::SlowConsumer => close::SLOW_CONSUMER,
    };
    // A client judged dead will not answer the close; do not hold its slot for long.
    let grace = match end {
        End::HeartbeatTimeout => settings.write_timeout.min(DEAD_CLIENT_GRACE),
        _ => settings.write_timeout,
    };
    let slow = matches!(end, End::SlowConsumer);
    let dropped = &shared.metrics.dropped_slow_consumer;
    if slow {
        // Everything queued for it that it will not get: unread on its channels and
        // waiting in its write. What the kernel already took still reaches a client that
        // reads again (see `writer::close`). Counted before the close, which may take the
        // whole grace period.
        dropped.inc_by(discarded);
    }
    let finished = writer::close(&mut ws, unfinished, code, grace).await;
    if slow && cut_publication && !finished {
        dropped.inc();
    }
}

/// What woke the session, in the order it looks: the drain, a deadline, a subscribe's
/// answers, a client frame, the heartbeat, publications.
enum Event {
    Drain,
    End(End),
    Answers(resume::Pending, resume::Answers),
    Incoming(Option<Result<Message, WsError>>),
    Heartbeat,
    News,
}

async fn serve<S>(
    ws: &mut WebSocketStream<Gated<S>>,
    inbox: &Inbox,
    batch: &mut Batch,
    requests: &mut Requests,
    shared: &Shared,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &shared.settings;
    let readable = ws.get_ref().readable().clone();
    let mut clock = Deadlines::new(settings.heartbeat, requests.expires_at());
    let mut last_seen = Instant::now();
    // Polled once, which registers this task on the token every session shares; after
    // that only its flag is read. Polling it on every turn took the token's mutex each
    // time (4.9% of the server's instructions in a callgrind profile of `channels`).
    let drain = shared.drain.cancelled();
    tokio::pin!(drain);
    let mut drain_watched = false;
    let timer = tokio::time::sleep_until(clock.next());
    tokio::pin!(timer);
    // Whether the timer was polled since it was last set (which registers it).
    let mut timer_set = false;

    // The tapes the inbox marked, taken each turn; the buffer is reused.
    let mut tapes = Vec::new();
    // A subscribe whose `ok` waits for Redis. Meanwhile neither client frames (replies
    // stay in request order) nor publications (they follow the `ok`) are read.
    let mut waiting: Option<Pin<Box<Waiting>>> = None;

    loop {
        // Publications last: a steady stream keeps the inbox always ready, and must not
        // starve client requests, the heartbeat, expiry or the drain. Each source is
        // looked at only when it may have something: the reader when the socket woke,
        // the timer when a deadline passed.
        let event = std::future::poll_fn(|cx| {
            if clock.close_at.is_none() {
                let drained = match drain_watched {
                    true => shared.drain.is_cancelled(),
                    false => {
                        drain_watched = true;
                        drain.as_mut().poll(cx).is_ready()
                    }
                };
                if drained {
                    return Poll::Ready(Event::Drain);
                }
            }
            let next = clock.next();
            if timer.deadline() != next {
                timer.as_mut().reset(next);
                timer_set = false;
            }
            let mut beat = false;
            if !timer_set || Instant::now() >= next {
                // A timer polled when the task's coop budget is spent returns Pending
                // without registering: only a poll with budget left arms it.
                timer_set = tokio::task::coop::has_budget_remaining();
                if timer.as_mut().poll(cx).is_ready() {
                    match clock.due(Instant::now()) {
                        Some(Due::Close) => return Poll::Ready(Event::End(End::GoingAway)),
                        Some(Due::Expired) => return Poll::Ready(Event::End(End::TokenExpired)),
                        Some(Due::Heartbeat) => beat = true,
                        None => {}
                    }
                }
            }
            match waiting.as_mut() {
                Some(pending) => {
                    if let Poll::Ready((pending, answers)) = pending.as_mut().poll(cx) {
                        return Poll::Ready(Event::Answers(pending, answers));
                    }
                }
                None => {
                    if readable.poll(cx).is_ready() {
                        if let Poll::Ready(incoming) = ws.poll_next_unpin(cx) {
                            return Poll::Ready(Event::Incoming(incoming));
                        }
                    }
                }
            }
            if beat {
                return Poll::Ready(Event::Heartbeat);
            }
            if waiting.is_none() && inbox.poll_news(cx).is_ready() {
                return Poll::Ready(Event::News);
            }
            Poll::Pending
        })
        .await;
        let written = match event {
            Event::End(end) => return end,
            Event::Drain => {
                // Spread the closes so clients do not all reconnect in the same instant.
                let spread = settings
                    .drain_period
                    .mul_f64(rand::rng().random_range(0.0..1.0));
                clock.close_at = Some(Instant::now() + spread);
                continue;
            }
            Event::Answers(pending, answers) => {
                waiting = None;
                let (ok, frames) = match requests.finish(pending, answers) {
                    Ok(done) => done,
                    Err(pending) => {
                        waiting = Some(Box::pin(pending.wait(settings.history_wait)));
                        continue;
                    }
                };
                let mut frames = VecDeque::from(frames);
                match send_all(ws, [Message::Text(ok.into())], settings.write_timeout).await {
                    Ok(()) => send_batch(ws, &mut frames, settings.write_timeout).await,
                    failed => failed,
                }
            }
            Event::Incoming(incoming) => {
                last_seen = Instant::now();
                let message = match incoming {
                    None => return End::Gone,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        return End::TooBig;
                    }
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                        return End::Gone;
                    }
                    Some(Err(WsError::Utf8(_))) => return End::BadUtf8,
                    Some(Err(WsError::Protocol(_))) => return End::ProtocolError,
                    Some(Err(_)) => return End::Gone,
                    Some(Ok(message)) => message,
                };
                match requests.handle(message) {
                    Verdict::Reply(text) => {
                        // A refresh may have moved the deadline.
                        clock.expires_at = requests.expires_at();
                        send_all(ws, [Message::Text(text.into())], settings.write_timeout).await
                    }
                    Verdict::Wait(pending) => {
                        waiting = Some(Box::pin(pending.wait(settings.history_wait)));
                        Ok(())
                    }
                    Verdict::Nothing => Ok(()),
                    Verdict::Abusive => return End::RateLimited,
                }
            }
            Event::Heartbeat => {
                if last_seen.elapsed() > settings.heartbeat * 2 {
                    return End::HeartbeatTimeout;
                }
                clock.beat(Instant::now());
                send_all(
                    ws,
                    [Message::Ping(Default::default())],
                    settings.write_timeout,
                )
                .await
            }
            Event::News => {
                if inbox.take(&mut tapes) {
                    return End::Disconnected;
                }
                requests.subs.read(&mut tapes, batch);
                let missed = std::mem::take(&mut batch.missed);
                if missed > 0 {
                    shared.metrics.dropped_queue_full.inc_by(missed);
                }
                send_batch(ws, &mut batch.frames, settings.write_timeout).await
            }
        };
        match written {
            Ok(()) => {}
            Err(WriteError::Stuck) => return End::SlowConsumer,
            Err(WriteError::Broken) => return End::Gone,
        }
    }
}

/// A subscribe waiting for Redis, and then its answers.
type Waiting = dyn Future<Output = (resume::Pending, resume::Answers)> + Send;
