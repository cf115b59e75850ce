//! Moves the Redis side toward the hub: SUBSCRIBE what clients hold, UNSUBSCRIBE what they left.
//!
//! The live hub is the truth; this only tracks what Redis confirmed on the current
//! connection. Every batch's reply is checked: a failure ends the connection, and the
//! reconnect resubscribes the hub's whole union, so nothing a client asked for is lost.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use tracing::warn;

use super::intake::Intake;
use crate::channel::{Name, Prefix};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::tape::Tape;

/// Channels per SUBSCRIBE/UNSUBSCRIBE: large enough to resubscribe thousands quickly,
/// small enough that one command stays far below Redis's query buffer limits
/// (centrifuge uses the same batch size).
pub const BATCH: usize = 512;

/// What went wrong with a batch; the connection is treated as lost.
#[derive(Debug)]
pub enum BatchError {
    Redis(redis::RedisError),
    Timeout(Duration),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Redis(e) => write!(f, "redis refused a batch: {e}"),
            BatchError::Timeout(t) => write!(f, "a batch got no reply within {t:?}"),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Subscribe,
    Unsubscribe,
}

/// The channels Redis confirmed on one connection.
pub struct Reconciler<'a> {
    conn: MultiplexedConnection,
    intake: &'a Intake,
    on_redis: HashSet<Name>,
    hub: &'a Hub,
    prefix: &'a Prefix,
    metrics: &'a Metrics,
    timeout: Duration,
}

impl<'a> Reconciler<'a> {
    pub fn new(
        conn: MultiplexedConnection,
        intake: &'a Intake,
        hub: &'a Hub,
        prefix: &'a Prefix,
        metrics: &'a Metrics,
        timeout: Duration,
    ) -> Self {
        Reconciler {
            conn,
            intake,
            on_redis: HashSet::new(),
            hub,
            prefix,
            metrics,
            timeout,
        }
    }

    /// Subscribes the control channel (`Prefix::control`). A refusal (an ACL without it)
    /// is logged, not fatal: only the server API's disconnect needs it.
    pub async fn subscribe_control(&mut self) -> Result<(), BatchError> {
        let control = self.prefix.control();
        let (conn, intake, timeout) = (&mut self.conn, self.intake, self.timeout);
        match patient(intake, timeout, conn.subscribe(&control)).await {
            Err(BatchError::Redis(e)) if refused(&e) => {
                warn!(channel = %control, error = %e, "redis refused the control channel; \
                      the server API's disconnect will not reach this instance");
                Ok(())
            }
            done => done,
        }
    }

    /// On a fresh connection: subscribes the union clients hold now; returns their tapes.
    /// History channels hold their live publications from here until they are filled.
    pub async fn resubscribe_all(&mut self) -> Result<Vec<Arc<Tape>>, BatchError> {
        // Changes from here on stay marked and are handled by `reconcile`; those before
        // are all reflected in the snapshot.
        self.hub.track_changes(true);
        self.hub.take_dirty();
        let tapes = self.hub.live_tapes();
        for tape in &tapes {
            tape.begin_fill();
        }
        let live: Vec<Name> = tapes.iter().map(|tape| tape.name().clone()).collect();
        self.apply(Kind::Subscribe, &live).await?;
        Ok(tapes)
    }

    /// Handles the channels marked since the last call, checking each against live counts,
    /// so a last-unsubscribe that raced a new subscribe never unsubscribes a held channel.
    /// Returns the changed channels that are live (subscribed now, or still subscribed:
    /// a channel left and joined again between two passes has a new tape on the same
    /// Redis subscription).
    pub async fn reconcile(&mut self) -> Result<Vec<Name>, BatchError> {
        let (mut add, mut remove, mut live) = (Vec::new(), Vec::new(), Vec::new());
        for name in self.hub.take_dirty() {
            match (self.hub.is_live(&name), self.on_redis.contains(&name)) {
                (true, false) => add.push(name),
                (true, true) => live.push(name),
                (false, true) => remove.push(name),
                (false, false) => {}
            }
        }
        self.apply(Kind::Subscribe, &add).await?;
        self.apply(Kind::Unsubscribe, &remove).await?;
        live.append(&mut add);
        Ok(live)
    }

    /// A PING in subscribed mode: proves the connection still carries traffic both ways.
    /// On a handle of its own, so it may be awaited while batches go on.
    pub fn probe(&self, deadline: Duration) -> impl Future<Output = Result<(), BatchError>> + 'a {
        let (mut conn, intake) = (self.conn.clone(), self.intake);
        async move {
            let ping = redis::cmd("PING");
            let reply = ping.query_async::<redis::Value>(&mut conn);
            patient(intake, deadline, reply).await.map(drop)
        }
    }

    async fn apply(&mut self, kind: Kind, names: &[Name]) -> Result<(), BatchError> {
        for batch in names.chunks(BATCH) {
            match self.send(kind, batch).await {
                Ok(()) => self.applied(kind, batch),
                // A channel an ACL refuses (NOPERM) is about that channel, not the
                // connection: treating it as lost resubscribed the same set forever and
                // cut off every client. Find which, refuse those, keep the rest.
                Err(BatchError::Redis(e)) if matches!(kind, Kind::Subscribe) && refused(&e) => {
                    for name in batch {
                        let one = std::slice::from_ref(name);
                        match self.send(kind, one).await {
                            Ok(()) => self.applied(kind, one),
                            Err(BatchError::Redis(e)) if refused(&e) => self.refuse(name, &e),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn send(&mut self, kind: Kind, batch: &[Name]) -> Result<(), BatchError> {
        let redis_names: Vec<String> = batch.iter().map(|n| self.prefix.to_redis(n)).collect();
        let (conn, intake, timeout) = (&mut self.conn, self.intake, self.timeout);
        match kind {
            Kind::Subscribe => patient(intake, timeout, conn.subscribe(&redis_names)).await,
            Kind::Unsubscribe => patient(intake, timeout, conn.unsubscribe(&redis_names)).await,
        }
    }

    fn applied(&mut self, kind: Kind, batch: &[Name]) {
        for name in batch {
            match kind {
                Kind::Subscribe => self.on_redis.insert(name.clone()),
                Kind::Unsubscribe => self.on_redis.remove(name),
            };
        }
        self.metrics.channels.set(self.on_redis.len() as i64);
    }

    /// Tells the subscribers of a channel Redis refused, and lets them drop it.
    fn refuse(&self, name: &Name, error: &redis::RedisError) {
        warn!(channel = %name, %error, "redis refused a channel; its subscribers are told");
        if let Some(tape) = self.hub.tape(name) {
            tape.refuse(&format!("redis refused the channel: {error}"));
        }
    }
}

/// Waits for a reply on the subscriber connection, within `deadline` of the last sign of
/// life. Replies queue behind the publications Redis holds for Herald, so a fan-out that
/// is behind delays them (measured: a 20,000-publication burst kept the reply ~10s); while
/// publications keep arriving the connection is alive and the wait goes on. A whole
/// deadline with neither a reply nor a publication is a dead connection.
pub(super) async fn patient<T>(
    intake: &Intake,
    deadline: Duration,
    reply: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BatchError> {
    let mut reply = std::pin::pin!(reply);
    let mut seen = intake.arrivals();
    loop {
        match tokio::time::timeout(deadline, reply.as_mut()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => return Err(BatchError::Redis(e)),
            Err(_) => {
                let now = intake.arrivals();
                if now == seen {
                    return Err(BatchError::Timeout(deadline));
                }
                seen = now;
            }
        }
    }
}

/// Whether Redis refused a channel by its ACL, as opposed to failing the connection.
fn refused(error: &redis::RedisError) -> bool {
    error.code() == Some("NOPERM")
}
