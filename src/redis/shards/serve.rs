//! The subscriber's life on a Redis Cluster: what `Subscriber::serve` and `control` are
//! for a single Redis, with a link per master (`Shards`) and the topology followed.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use super::{Context, Event, Shards, REFRESH};
use crate::backoff::Backoff;
use crate::history::request::Receiver as Requests;
use crate::redis::history::History;
use crate::redis::intake::CloseOnDrop;
use crate::redis::io::Io;
use crate::redis::outage::{Lost, Outage};
use crate::redis::store::Store;
use crate::redis::Subscriber;

impl Subscriber {
    /// One life of the cluster subscriber; returns only when it must start over (no
    /// master reachable, the history store failing).
    pub(in crate::redis) async fn serve_cluster(
        &self,
        io: &Io,
        seeds: &[redis::ConnectionInfo],
        backoff: &mut Backoff,
        outage: &mut Outage,
        requests: &mut Requests,
    ) -> Lost {
        let timeout = self.settings.timeout;
        let intake = self.intake();
        let _closing = CloseOnDrop(intake.clone());
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let cx = Context {
            io,
            seeds,
            intake: &intake,
            events: events_tx,
            hub: &self.hub,
            prefix: &self.settings.prefix,
            metrics: &self.metrics,
            timeout,
            library: (!self.settings.history.is_empty()).then(|| {
                let (prefix, rules) = (&self.settings.prefix, &self.settings.history);
                crate::history::library::source(prefix.as_str(), rules, true)
            }),
        };
        let shards = match Shards::start(cx).await {
            Ok(shards) => shards,
            Err(e) => return Lost::Connect(e),
        };
        // As for a single Redis, publications flow from the first link on (`serve`).
        tokio::select! {
            lost = self.read(&intake) => lost,
            lost = self.establish_cluster(shards, seeds, &mut events, backoff, outage, requests) => lost,
        }
    }

    async fn establish_cluster(
        &self,
        mut shards: Shards<'_>,
        seeds: &[redis::ConnectionInfo],
        events: &mut mpsc::UnboundedReceiver<Event>,
        backoff: &mut Backoff,
        outage: &mut Outage,
        requests: &mut Requests,
    ) -> Lost {
        let timeout = self.settings.timeout;
        let connect = Store::connect_cluster(seeds, timeout, self.settings.history_timeout);
        let store = match self.open_store(connect).await {
            Ok(store) => store,
            Err(lost) => return lost,
        };
        if let Err(e) = shards.subscribe_control().await {
            return Lost::batch(e);
        }
        let tapes = shards.resubscribe_all().await;
        let mut history = History::new(store, &self.hub, &self.settings.prefix, &self.metrics);
        if let Err(e) = history.fill(&tapes).await {
            return Lost::batch(e);
        }
        let ended = outage.end();
        if ended.is_some() {
            self.metrics.redis_reconnects_total.inc();
        }
        self.metrics.redis_connected.set(1);
        info!(
            channels = tapes.len(),
            masters = shards.links.len(),
            "redis cluster subscriber connected"
        );
        drop(tapes);
        self.follow(&mut shards, &mut history, events, requests, backoff)
            .await
    }

    /// `control` for a Cluster: also takes the links' events and keeps the channels on
    /// their masters as the topology changes.
    async fn follow(
        &self,
        shards: &mut Shards<'_>,
        history: &mut History<'_>,
        events: &mut mpsc::UnboundedReceiver<Event>,
        requests: &mut Requests,
        backoff: &mut Backoff,
    ) -> Lost {
        let interval = self.settings.probe_interval;
        let mut probe = tokio::time::interval_at(Instant::now() + interval, interval);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval_at(Instant::now() + REFRESH, REFRESH);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Rehoming retries on its own backoff: a master being failed over answers nothing
        // for seconds, and the other masters' channels go on meanwhile.
        let mut retry = Backoff::new(self.settings.backoff_base, self.settings.backoff_max);
        let mut rehome_at: Option<Instant> = None;
        loop {
            // Up while every channel is on its master; a master away shows per node too.
            let settled = shards.settled();
            self.readiness.set_redis_up(settled);
            self.metrics.redis_connected.set(i64::from(settled));
            if shards.needs_rehome() && rehome_at.is_none() {
                rehome_at = Some(Instant::now() + retry.next_delay());
            }
            let until = rehome_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = self.hub.changed() => {
                    let (live, moved) = shards.reconcile().await;
                    if let Err(e) = history.fill(&moved).await {
                        return Lost::batch(e);
                    }
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
                Some(event) = events.recv() => {
                    shards.on_event(event);
                    while let Ok(event) = events.try_recv() {
                        shards.on_event(event);
                    }
                }
                _ = tokio::time::sleep_until(until), if rehome_at.is_some() => {
                    rehome_at = None;
                    let moved = shards.rehome().await;
                    if let Err(e) = history.fill(&moved).await {
                        return Lost::batch(e);
                    }
                    if let Err(e) = history.serve().await {
                        return Lost::batch(e);
                    }
                    if !shards.needs_rehome() {
                        retry.reset();
                    }
                }
                _ = refresh.tick() => shards.mark_stale(),
                _ = probe.tick() => {
                    shards.probe(interval).await;
                    // A master away leaves its library unchecked until it is back; not a
                    // reason to start over.
                    if let Err(e) = history.keep_library(&self.settings.history).await {
                        warn!(error = %e, "herald function library not checked on every master");
                    }
                    backoff.reset();
                }
            }
        }
    }
}
