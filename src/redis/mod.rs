//! The one connection to Redis that carries every channel (one per master on a Cluster),
//! and its own thread.
//!
//! ```text
//! loop:
//!   connect (deadline) ──fail──► wait (jittered backoff; ~30s if credentials refused) ─┐
//!     to the URL's node, or the master the sentinels name now (ROLE must say master)   │
//!   history on: command connection, FUNCTION LOAD REPLACE the library                  │
//!   resubscribe the hub's union in batches (history channels hold live meanwhile)      │
//!   gap-fill: history channels read what they missed; the others get `gap`            │
//!   ready; then concurrently:                                                          │
//!     read:    on the io thread, each publication -> hub.publish (never waits)          │
//!     control: hub changed -> reconcile, anchor new history channels;                  │
//!              sessions' history requests -> one read per channel;                     │
//!              every interval PING must answer (then the backoff resets), library kept │
//!   any end of either = connection lost ───────────────────────────────────────────────┘
//!   (on Sentinel, `+switch-master` to another node also = lost, and no wait follows)
//! ```
//!
//! On a Redis Cluster (`redis+cluster://`) the same loop runs `shards` instead: a link
//! per master, each channel SSUBSCRIBEd on its slot's owner, the topology followed; a
//! lost master costs only its own channels a move (see `shards`).
//!
//! The subscriber runs on a thread of its own (`spawn`). The socket is read on another
//! (`io`), which fans each publication out as it reads it (`intake`), so a publication
//! wakes the sessions from outside the runtime that runs them (see `spawn` for why that
//! matters), and a fan-out that falls behind leaves the backlog in Redis, where its
//! output-buffer limit governs.
//!
//! The connection's end (redis-rs's disconnection push), a failed
//! batch or an unanswered probe all mean "reconnect", never a clean exit (a channel an ACL
//! refuses is refused to its subscribers instead: `reconcile`). The probe catches
//! the silent failure (half-open TCP, a wedged proxy) where nothing arrives and nothing errs.

mod commands;
mod history;
mod intake;
mod io;
mod locate;
mod outage;
mod publications;
mod reconcile;
mod sentinel;
mod shards;
mod store;
pub mod target;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::channel::Prefix;
use crate::disconnect::Disconnects;
use crate::history::request::Receiver as Requests;
use crate::history::Rules;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
pub use commands::Commands;
pub use locate::Locator;

use history::History;
use intake::{CloseOnDrop, Intake};
use io::Io;
use locate::{is_master, Node, Unlocated};
use outage::{Lost, Outage, REFUSED_RETRY};
use reconcile::{BatchError, Reconciler};
use sentinel::Unasked;
use store::Store;
use target::Target;

/// PEM contents for TLS to Redis beyond the URL: a private CA, a client certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    /// Certificate and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// The subscriber's settings, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub tls: TlsFiles,
    pub prefix: Prefix,
    /// History channels; none: no command connection and no function library.
    pub history: Rules,
    /// Deadline of each history read (and of the library's loading).
    pub history_timeout: Duration,
    pub probe_interval: Duration,
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// How long to wait before listening on the next sentinel when one fails.
const SENTINEL_PAUSE: Duration = Duration::from_secs(1);

/// Where the settings say Redis is, read once.
pub fn locator(settings: &Settings) -> redis::RedisResult<Locator> {
    let target = Target::parse(&settings.url).map_err(|e| {
        redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    Locator::new(target, settings.tls.clone())
}

/// A client for the URL, with the CA and client certificate when configured.
pub fn client_for(url: &str, tls: &TlsFiles) -> redis::RedisResult<redis::Client> {
    let TlsFiles { ca, client } = tls;
    if ca.is_none() && client.is_none() {
        return redis::Client::open(url);
    }
    let certificates = redis::TlsCertificates {
        client_tls: client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: ca.clone(),
    };
    redis::Client::build_with_tls(url, certificates)
}

/// Marks Redis down when dropped: the subscriber thread holds one for its whole life.
struct Unready(Arc<Readiness>, Metrics);

impl Drop for Unready {
    fn drop(&mut self) {
        self.0.set_redis_up(false);
        self.1.redis_connected.set(0);
    }
}

pub struct Subscriber {
    /// Where to connect, asked again at every connect.
    locator: Arc<Locator>,
    settings: Settings,
    hub: Arc<Hub>,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    /// The publication path, shared with the io thread.
    fanout: Arc<publications::Fanout>,
    /// The seed nodes, on a Redis Cluster (`redis+cluster://`).
    cluster: Option<Vec<redis::ConnectionInfo>>,
}

impl Subscriber {
    pub fn new(
        settings: Settings,
        locator: Arc<Locator>,
        hub: Arc<Hub>,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        disconnects: Arc<Disconnects>,
    ) -> Self {
        let fanout = Arc::new(publications::Fanout {
            hub: hub.clone(),
            prefix: settings.prefix.clone(),
            control: settings.prefix.control(),
            disconnects,
            metrics: metrics.clone(),
        });
        Subscriber {
            cluster: locator.target().seeds(),
            locator,
            settings,
            fanout,
            hub,
            metrics,
            readiness,
        }
    }

    /// Runs the subscriber on a thread of its own with a single-threaded runtime, until
    /// `shutdown`; the receiver resolves when it has stopped.
    ///
    /// Why not a task beside the sessions: tokio queues a task woken from one of its own
    /// workers on that worker's local queue, which it serves ahead of its shared queue. When
    /// a worker delivered publications, the few hundred sessions each one woke that fit the
    /// local queue (256) cycled ahead of the thousands that overflowed, which waited several
    /// rounds. Woken from this thread, every session goes through the shared queue, first
    /// in first out, so each waits at most one round. Measured interleaved, fanout 5,000
    /// clients x 200/s, p99: 391 / 331 / 314 ms before, 115 / 125 / 100 ms after.
    pub fn spawn(
        self,
        requests: Requests,
        shutdown: CancellationToken,
    ) -> std::io::Result<oneshot::Receiver<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let io = Io::spawn()?;
        let (stopped, on_stop) = oneshot::channel();
        std::thread::Builder::new()
            .name("herald-redis".into())
            .spawn(move || {
                // However the thread ends (a panic unwinds through here too), the instance
                // must stop reporting ready; `stopped` resolves either way (sent, or
                // dropped), for the app to notice.
                let _unready = Unready(self.readiness.clone(), self.metrics.clone());
                runtime.block_on(self.run(&io, requests, shutdown));
                let _ = stopped.send(());
            })?;
        Ok(on_stop)
    }

    /// Runs until `shutdown`; a lost connection always leads to a reconnect.
    async fn run(self, io: &Io, mut requests: Requests, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.backoff_base, self.settings.backoff_max);
        let mut outage = Outage::default();
        // The node of the last connection (or attempt), for the logs.
        let mut node = None;
        loop {
            let lost = tokio::select! {
                _ = shutdown.cancelled() => return,
                lost = self.serve(io, &mut backoff, &mut outage, &mut requests, &mut node) => lost,
            };
            let node = node.as_deref().unwrap_or("-");
            self.readiness.set_redis_up(false);
            self.metrics.redis_connected.set(0);
            self.metrics.channels.set(0);
            // The next connection resubscribes the live set: no change needs keeping.
            self.hub.track_changes(false);
            let ceiling = backoff.ceiling();
            let new_outage = outage.begin();
            let wait = if lost.is_refused() {
                REFUSED_RETRY.mul_f64(rand::random_range(0.5..=1.0))
            } else if let Lost::Switched(_) = lost {
                // The sentinels named the new master already: dial it now, and so must
                // the command connections.
                self.locator.moved();
                Duration::ZERO
            } else {
                backoff.next_delay()
            };
            // One line per outage; the retries within it are debug noise.
            if new_outage && lost.is_refused() {
                tracing::error!(
                    cause = %lost,
                    retry_in = ?wait,
                    "redis refused Herald's credentials: check the user and password in \
                     HERALD_REDIS_URL (and the user's ACL); retrying about every {:?}",
                    REFUSED_RETRY
                );
            } else if let (true, Lost::UnknownMaster(name)) = (new_outage, &lost) {
                tracing::error!(
                    cause = %lost,
                    retry_in = ?wait,
                    "no sentinel knows a master named {name:?}: check the name after the \
                     hosts in HERALD_REDIS_URL (the <name> of `sentinel monitor <name> ...`); \
                     not ready until one does"
                );
            } else if new_outage {
                warn!(cause = %lost, node, retry_in = ?wait, ?ceiling, "redis subscriber connection down");
            } else {
                debug!(cause = %lost, node, retry_in = ?wait, ?ceiling, "redis subscriber still down");
            }
            // While down, requests cannot be served: dropping one answers "cannot tell".
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut sleep => break,
                    Some(request) = requests.recv() => drop(request),
                }
            }
        }
    }

    /// One connection's life; returns only when it is lost.
    async fn serve(
        &self,
        io: &Io,
        backoff: &mut Backoff,
        outage: &mut Outage,
        requests: &mut Requests,
        at: &mut Option<String>,
    ) -> Lost {
        if let Some(seeds) = &self.cluster {
            return self
                .serve_cluster(io, seeds, backoff, outage, requests)
                .await;
        }
        let timeout = self.settings.timeout;
        let node = match self.locator.master(timeout).await {
            Ok(node) => node,
            Err(Unlocated::Sentinels(Unasked::UnknownMaster(name))) => {
                return Lost::UnknownMaster(name)
            }
            Err(e) => return Lost::Connect(e.to_string()),
        };
        if at.as_ref().is_some_and(|last| *last != node.addr) {
            self.locator.moved();
        }
        *at = Some(node.addr.clone());
        let intake = self.intake();
        // However this connection ends, its late publications must not reach the hub.
        let _closing = CloseOnDrop(intake.clone());
        let connect = io.connect(&node.pubsub, &intake, timeout);
        let conn = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Lost::connect(BatchError::Redis(e)),
            Err(_) => return Lost::connect(BatchError::Timeout(timeout)),
        };
        if node.check_role {
            if let Err(e) = is_master(&mut conn.clone(), timeout).await {
                return Lost::Connect(e);
            }
        }
        // Publications are fanned out from the first: held back until the resubscribe
        // and fill ended, they filled the intake, the connection was no longer read, a
        // SUBSCRIBE reply behind them never came, and the connection was lost again, in a
        // loop (tests/it/intake.rs). A tape being filled holds what arrives meanwhile.
        tokio::select! {
            lost = self.read(&intake) => lost,
            lost = self.establish(conn, &node, &intake, backoff, outage, requests) => lost,
            lost = self.switched(&node) => lost,
        }
    }

    /// Resolves when the sentinels announce another master than `node`; never for a
    /// single node.
    async fn switched(&self, node: &Node) -> Lost {
        let Target::Sentinel(sentinels) = self.locator.target() else {
            return std::future::pending().await;
        };
        let (tls, timeout) = (self.locator.tls(), self.settings.timeout);
        let announced =
            sentinel::switched(sentinels, tls, &node.addr, timeout, SENTINEL_PAUSE).await;
        Lost::Switched(announced)
    }

    /// Resubscribes, fills and, once ready, follows the hub (`control`); returns only when
    /// the connection is lost.
    async fn establish(
        &self,
        conn: redis::aio::MultiplexedConnection,
        node: &Node,
        intake: &Intake,
        backoff: &mut Backoff,
        outage: &mut Outage,
        requests: &mut Requests,
    ) -> Lost {
        let timeout = self.settings.timeout;
        let connect = Store::connect(&node.client, timeout, self.settings.history_timeout);
        let store = match self.open_store(connect).await {
            Ok(store) => store,
            Err(lost) => return lost,
        };
        let mut reconciler = Reconciler::new(
            conn,
            intake,
            &self.hub,
            &self.settings.prefix,
            &self.metrics,
            timeout,
        );
        if let Err(e) = reconciler.subscribe_control().await {
            return Lost::batch(e);
        }
        let tapes = match reconciler.resubscribe_all().await {
            Ok(tapes) => tapes,
            Err(e) => return Lost::batch(e),
        };
        let resubscribed = tapes.len();
        let mut history = History::new(store, &self.hub, &self.settings.prefix, &self.metrics);
        if let Err(e) = history.fill(&tapes).await {
            return Lost::batch(e);
        }
        drop(tapes);

        let ended = outage.end();
        if ended.is_some() {
            self.metrics.redis_reconnects_total.inc();
        }
        self.metrics.redis_connected.set(1);
        self.readiness.set_redis_up(true);
        match ended {
            Some((down_for, attempts)) => info!(
                channels = resubscribed,
                node = %node.addr,
                ?down_for,
                attempts,
                "redis subscriber reconnected and resubscribed"
            ),
            None => info!(channels = resubscribed, node = %node.addr, "redis subscriber connected"),
        }
        self.control(&mut reconciler, &mut history, requests, backoff)
            .await
    }

    /// The history store, its library loaded; none while no channel keeps history.
    async fn open_store(
        &self,
        connect: impl std::future::Future<Output = Result<Store, BatchError>>,
    ) -> Result<Option<Store>, Lost> {
        if self.settings.history.is_empty() {
            return Ok(None);
        }
        let mut store = connect.await.map_err(Lost::connect)?;
        let (prefix, rules) = (&self.settings.prefix, &self.settings.history);
        store
            .load_library(prefix, rules)
            .await
            .map_err(Lost::batch)?;
        Ok(Some(store))
    }

    /// Follows the hub's changes, answers the sessions' history requests and probes
    /// liveness, on the same connection.
    async fn control(
        &self,
        reconciler: &mut Reconciler<'_>,
        history: &mut History<'_>,
        requests: &mut Requests,
        backoff: &mut Backoff,
    ) -> Lost {
        let interval = self.settings.probe_interval;
        let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The probe's PING in flight. Awaited beside the other branches, not inline: its
        // reply queues behind whatever Redis holds for Herald, and hub changes must not
        // wait for that (measured: a new channel waited out a 10s backlog).
        let mut pinging = None;
        loop {
            tokio::select! {
                _ = self.hub.changed() => {
                    let live = match reconciler.reconcile().await {
                        Ok(live) => live,
                        Err(e) => return Lost::batch(e),
                    };
                    if let Err(e) = history.anchor_and_serve(&live).await {
                        return Lost::batch(e);
                    }
                }
                Some(request) = requests.recv() => {
                    history.take(request, requests);
                    if let Err(e) = history.serve().await {
                        return Lost::batch(e);
                    }
                }
                _ = probe.tick(), if pinging.is_none() => {
                    pinging = Some(Box::pin(reconciler.probe(interval)));
                }
                answer = async { pinging.as_mut().expect("guarded").await }, if pinging.is_some() => {
                    pinging = None;
                    if let Err(e) = answer {
                        return Lost::Probe(e);
                    }
                    if let Err(e) = history.keep_library(&self.settings.history).await {
                        return Lost::batch(e);
                    }
                    // Healthy for a whole probe interval: only now may the next outage
                    // start from the shortest wait. Resetting on resubscribe let a
                    // connection Redis kills again under the same load (output-buffer
                    // limit) retry within milliseconds, resubscribing everything in a loop.
                    backoff.reset();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_thread_that_panics_leaves_the_instance_unready() {
        let readiness = Arc::new(Readiness::default());
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        readiness.set_redis_up(true);
        metrics.redis_connected.set(1);
        let guard = Unready(readiness.clone(), metrics.clone());
        let thread = std::thread::spawn(move || {
            let _unready = guard;
            panic!("forced end of the subscriber thread");
        });
        assert!(thread.join().is_err());
        assert!(!readiness.is_ready());
        assert_eq!(metrics.redis_connected.get(), 0);
    }
}
