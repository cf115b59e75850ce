//! Scale-out, with the deploy/ configs as shipped: one redis-server, three Herald instances,
//! HAProxy in front (deploy/haproxy.cfg), Prometheus scraping all three
//! (deploy/prometheus.yml), and 300 clients that connect through HAProxy and keep every
//! sequence number they receive, and the last offset: the channel keeps history (contract
//! 1.1) and every publication goes through `FCALL herald_publish`.
//!
//! The story: the clients spread over all three instances; a publication reaches each of
//! them exactly once; Prometheus sees all three up and all 300 connections; Redis is killed
//! and restarted without persistence and all three resubscribe (timed), each client told
//! once that history was lost; then one instance is stopped while publications flow: its
//! clients get 1001, reconnect through HAProxy to the other two and resume there with
//! `since`, HAProxy takes it out of rotation on /readyz, it exits 0, and no client misses
//! anything (the moved clients' loss is counted per client and printed: zero).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;
use tokio_util::sync::CancellationToken;

use crate::support::client::{try_connect, Ws};
use crate::support::eventually::expect_eq;
use crate::support::haproxy::Haproxy;
use crate::support::metrics::Scrape;
use crate::support::prometheus::{Prometheus, Series};
use crate::support::{eventually, http, millis, secs, Client, Gateway, Redis};

const CLIENTS: usize = 300;
const CHANNEL: &str = "feed";
/// Publications per second while an instance drains: steady and bounded.
const RATE: u64 = 50;
/// Short timings so drains and reconnects fit a test's patience. HAProxy is the peer of
/// every connection, so it is the trusted proxy whose X-Forwarded-For names the client.
const HERALD_ARGS: &[&str] = &[
    "--drain-period",
    "2s",
    "--redis-probe-interval",
    "500ms",
    "--redis-backoff-base",
    "20ms",
    "--redis-backoff-max",
    "200ms",
    "--write-timeout",
    "2s",
    "--trusted-proxies",
    "127.0.0.1",
    // Far more than a move takes at RATE, so every resume is covered.
    "--history",
    "feed=1000/5m",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_haproxy_with_prometheus() {
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    let setup = started.elapsed();
    cluster
        .clients_spread_and_each_gets_a_publication_once()
        .await;
    let prometheus_wait = cluster.prometheus_sees_every_instance_and_client().await;
    cluster.redis_restart_resubscribes_every_instance().await;
    let rolling = Instant::now();
    cluster.rolling_restart_moves_one_instances_clients().await;
    eprintln!(
        "scale_out: times: setup {} ms, Prometheus query wait {} ms, rolling restart {} ms, \
         total {} ms",
        setup.as_millis(),
        prometheus_wait.as_millis(),
        rolling.elapsed().as_millis(),
        started.elapsed().as_millis()
    );
}

/// Everything the test started; all of it stops on drop.
struct Cluster {
    redis: Redis,
    /// herald1..herald3, in HAProxy's order.
    gateways: Vec<Gateway>,
    prometheus: Prometheus,
    haproxy: Haproxy,
    fleet: Arc<Fleet>,
    tasks: Vec<JoinHandle<ClientLog>>,
    /// The last sequence number published on CHANNEL.
    seq: Arc<AtomicU64>,
}

impl Cluster {
    /// Redis, three ready instances, Prometheus and HAProxy in front, then 300 clients
    /// connected through HAProxy, each subscribed through the query as a real one is.
    async fn start() -> Cluster {
        let redis = Redis::start().await;
        let mut gateways = Vec::new();
        for _ in 0..3 {
            gateways.push(Gateway::start(&redis.url(), HERALD_ARGS).await);
        }
        for gw in &gateways {
            gw.wait_ready(secs(10)).await;
        }
        let addrs: Vec<SocketAddr> = gateways.iter().map(Gateway::addr).collect();
        // Started before the clients: its first scrape comes within one 5s interval.
        let prometheus = Prometheus::start(&addrs).await;
        let haproxy = Haproxy::start([addrs[0], addrs[1], addrs[2]]).await;

        let url = haproxy.ws_url(&format!("channels={CHANNEL}"));
        // A moved client resubscribes itself, with `since`.
        let resume_url = haproxy.ws_url("");
        let fleet = Arc::new(Fleet::new(CLIENTS));
        let mut tasks = Vec::new();
        for index in 0..CLIENTS {
            let client = Client::connect(&url).await;
            assert_eq!(client.welcome_channels(), [CHANNEL], "{}", client.welcome);
            fleet.clients[index].connected.store(true, Ordering::SeqCst);
            let task = run_client(index, client, resume_url.clone(), fleet.clone());
            tasks.push(tokio::spawn(task));
        }
        Cluster {
            redis,
            gateways,
            prometheus,
            haproxy,
            fleet,
            tasks,
            seq: Arc::default(),
        }
    }

    async fn clients_spread_and_each_gets_a_publication_once(&self) {
        let landed = eventually(
            "herald_connections on every instance > 0, summing to 300",
            secs(10),
            async || {
                let counts = gauges(&self.gateways, "herald_connections").await;
                let sum: f64 = counts.iter().sum();
                if counts.iter().all(|c| *c > 0.0) && sum == CLIENTS as f64 {
                    Ok(counts)
                } else {
                    Err(counts)
                }
            },
        )
        .await;
        eprintln!(
            "scale_out: {CLIENTS} clients through HAProxy landed {landed:?} on the 3 instances"
        );
        // One subscriber connection per instance carries the channel.
        wait_numsub(&self.redis, 3, secs(10)).await;
        // Once: every sequence number is checked when the clients are done.
        let first = self.publish_next(false).await;
        self.fleet
            .wait_all_reached(first, "the first publication", secs(10))
            .await;
    }

    /// Through Prometheus's HTTP API: all three up, every connection counted. Returns how
    /// long it took (scrapes come every 5s).
    async fn prometheus_sees_every_instance_and_client(&self) -> Duration {
        let started = Instant::now();
        let mut expected_up: Vec<(String, f64)> = self
            .gateways
            .iter()
            .map(|gw| (gw.addr().to_string(), 1.0))
            .collect();
        expected_up.sort_by(|a, b| a.0.cmp(&b.0));
        eventually(
            "Prometheus: up{job=\"herald\"} == 1 for the 3 instances and \
             sum(herald_connections) == 300",
            secs(30),
            async || {
                let up = by_instance(self.prometheus.query("up{job=\"herald\"}").await);
                let connections = self.prometheus.query("sum(herald_connections)").await;
                let total = connections.as_ref().map(|v| v.first().map(|s| s.value));
                if up.as_ref() == Ok(&expected_up) && total == Ok(Some(CLIENTS as f64)) {
                    Ok(())
                } else {
                    Err(format!("up: {up:?}; sum(herald_connections): {total:?}"))
                }
            },
        )
        .await;
        started.elapsed()
    }

    /// Redis dies (SIGKILL) and comes back on the same port: all three instances
    /// resubscribe (timed), and every client receives what is published after.
    async fn redis_restart_resubscribes_every_instance(&mut self) {
        self.redis.kill9();
        for gw in &self.gateways {
            gw.wait_readyz(503, secs(5)).await;
        }
        // Bracketed: restart() spawns redis-server and returns at the first PING answered
        // (it polls every 20ms), so Redis began accepting between these two moments.
        let respawned = Instant::now();
        self.redis.restart().await;
        let redis_back = Instant::now();
        eventually(
            "all three instances resubscribed: PUBSUB NUMSUB feed == 3 and /readyz 200 on each",
            secs(10),
            async || {
                let numsub = numsub(&self.redis, CHANNEL).await;
                let mut readyz = Vec::new();
                for gw in &self.gateways {
                    readyz.push(gw.try_get("/readyz").await.map(|(status, _)| status));
                }
                if numsub == 3 && readyz.iter().all(|r| r == &Ok(200)) {
                    Ok(())
                } else {
                    Err(format!("NUMSUB {numsub}; /readyz {readyz:?}"))
                }
            },
        )
        .await;
        let (since_ping, since_spawn) = (redis_back.elapsed(), respawned.elapsed());
        eprintln!(
            "scale_out: Redis restart: all 3 instances resubscribed {} ms after the test's first \
             PING was answered, {} ms after redis-server was spawned again (Redis began \
             accepting in between; /readyz and NUMSUB polled every 25ms)",
            since_ping.as_millis(),
            since_spawn.as_millis()
        );
        assert!(since_ping < secs(5), "resubscribing took {since_ping:?}");
        for gw in &self.gateways {
            let m = gw.metrics().await;
            assert_eq!(m.value("herald_redis_connected", &[]), 1.0, "{}", gw.addr());
            assert!(m.value("herald_redis_reconnects_total", &[]) >= 1.0);
        }
        assert_eq!(self.redis.pubsub_channels().await, [CHANNEL]);
        let after_restart = self.publish_next(false).await;
        // The gap frame comes before the publication after the restart.
        let no_gap = |me: &Tracked| u32::from(me.gaps.load(Ordering::SeqCst) != 1);
        self.fleet
            .wait_all_reached(
                after_restart,
                "a publication after the Redis restart",
                secs(10),
            )
            .await;
        assert_eq!(
            self.fleet.total(no_gap),
            0,
            "every client got exactly one gap for the outage"
        );
        // A short outage may still have failed two health checks; HAProxy needs all three
        // back (rise 2: two passing checks) before the rolling restart.
        for server in ["herald1", "herald2", "herald3"] {
            self.haproxy.wait_server(server, true, secs(10)).await;
        }
    }

    /// SIGTERM herald1 while publications flow at RATE per second: its clients get 1001
    /// and reconnect through HAProxy, which takes herald1 out of rotation on its 503
    /// /readyz, and resume with `since`; nothing lands on herald1 meanwhile; it exits 0;
    /// no client misses a publication (what each moved client missed is printed).
    async fn rolling_restart_moves_one_instances_clients(mut self) {
        let (draining, others) = self.gateways.split_at_mut(1);
        let draining = &mut draining[0];
        let moving = draining.metrics().await.value("herald_connections", &[]) as u32;
        let others_total_before = totals(others).await;
        let stop = CancellationToken::new();
        let first_steady = self.seq.load(Ordering::SeqCst) + 1;
        let publisher = tokio::spawn(publish_steadily(
            self.redis.url(),
            self.seq.clone(),
            stop.clone(),
        ));
        self.fleet
            .wait_all_reached(first_steady, "the first steady publication", secs(10))
            .await;

        draining.sigterm();
        draining.wait_readyz(503, secs(3)).await;
        let not_ready = Instant::now();
        let accepted_at_503 = draining
            .metrics()
            .await
            .value("herald_connections_total", &[]);
        let draining_watch = tokio::spawn(watch_accepted(draining.http_url("/metrics")));

        self.fleet
            .wait(
                &format!("the {moving} clients of herald1 to get 1001 and reconnect"),
                secs(15),
                |f| {
                    let moved = f.total(|c| c.moves.load(Ordering::SeqCst));
                    let away = f.clients.iter().filter(|c| !c.is_connected()).count();
                    if moved == moving && away == 0 {
                        Ok(())
                    } else {
                        Err(format!("{moved} moved, {away} not connected"))
                    }
                },
            )
            .await;
        let all_moved = not_ready.elapsed();

        // HAProxy takes herald1 out of rotation on its failing /readyz (fall 2, inter 1s).
        let (down_at, down_line) = self
            .haproxy
            .wait_server("herald1", false, secs(5))
            .await
            .expect("a DOWN line for herald1");
        let down_after = down_at.saturating_duration_since(not_ready);
        eprintln!(
            "scale_out: HAProxy marked herald1 DOWN {} ms after its /readyz turned 503: \
             {down_line}",
            down_after.as_millis()
        );
        assert!(
            down_after < secs(4),
            "HAProxy took {down_after:?} to stop routing to a 503 /readyz"
        );
        // Nothing was accepted by the draining instance after its /readyz turned 503: its
        // count, sampled until it stopped answering, never grew.
        let (samples, accepted_max) = draining_watch.await.expect("draining watcher");
        assert!(
            samples > 0,
            "herald1's /metrics was never read while draining"
        );
        assert_eq!(
            accepted_max, accepted_at_503,
            "herald1 accepted connections while draining ({samples} samples)"
        );
        let status = draining.wait_exit(secs(10)).await;
        assert_eq!(status.code(), Some(0), "herald1 exit status {status}");

        // Every client is on the other two, and each moved client was accepted there once.
        let expected = (CLIENTS as f64, others_total_before + f64::from(moving));
        eventually(
            "(herald_connections, herald_connections_total) summed over herald2 and herald3 \
             to be (all clients, before + moved clients)",
            secs(5),
            async || {
                let open: f64 = gauges(others, "herald_connections").await.iter().sum();
                expect_eq((open, totals(others).await), &expected)
            },
        )
        .await;
        let refused = self.fleet.total(|c| c.refused.load(Ordering::SeqCst));
        assert_eq!(
            refused, 0,
            "reconnects refused or failed (HAProxy should retry a draining 503 elsewhere)"
        );

        // Publications keep flowing to everyone; then the last one, marked.
        let later = self.seq.load(Ordering::SeqCst) + RATE / 2;
        self.fleet
            .wait_all_reached(later, "publications after the move", secs(10))
            .await;
        stop.cancel();
        publisher.await.expect("publisher task");
        // herald1's subscriber connection is gone with it.
        wait_numsub(&self.redis, 2, secs(5)).await;
        let last = self.publish_next(true).await;
        self.fleet
            .wait_all_reached(last, "the last publication", secs(10))
            .await;

        let mut missed = Vec::new();
        let mut moved_clients = Vec::new();
        // Kept open until the moved clients' log lines are in (see below).
        let mut unmoved_clients = Vec::new();
        for (index, task) in self.tasks.drain(..).enumerate() {
            let log = task.await.expect("client task");
            match log.segments.as_slice() {
                [only] => {
                    if let Err(e) = contiguous(only, 1, last) {
                        panic!("client {index} was not moved and must miss nothing: {e}");
                    }
                    unmoved_clients.push(log.client);
                }
                [before, after] => {
                    let (Some(&left), Some(&rejoined)) = (before.last(), after.first()) else {
                        panic!("client {index}: an empty connection: {before:?} / {after:?}");
                    };
                    if let Err(e) = contiguous(before, 1, left) {
                        panic!("client {index} before its move: {e}");
                    }
                    if let Err(e) = contiguous(after, rejoined, last) {
                        panic!("client {index} after its move: {e}");
                    }
                    assert!(rejoined > left, "client {index}: {left} then {rejoined}");
                    missed.push(rejoined - left - 1);
                    moved_clients.push(log.client);
                }
                more => panic!("client {index} connected {} times", more.len()),
            }
        }
        assert_eq!(missed.len(), moving as usize, "moved clients");

        // HAProxy's view of each reconnect, from its log line (written when a tunnelled
        // connection ends): the moved clients close one by one, each waiting for its line,
        // so HAProxy's non-blocking stdout log never overflows and drops lines. A `+` retry
        // count marks a reconnect HAProxy sent first to the draining herald1 (in rotation
        // until two checks failed), which refused it with 503, then retried on another
        // instance (`retry-on 503`, `option redispatch`).
        let mut redispatched = 0;
        for client in moved_clients {
            let local = local_addr(&client);
            // Only lines from now on: an earlier connection may have had the same local
            // port (the kernel reuses ephemeral ports), and its line would match.
            let since = self.haproxy.log_len();
            client.close().await;
            let line = self.haproxy.wait_log_from(local, since, secs(5)).await;
            assert!(
                line.status == 101 && line.server != "herald1",
                "a moved client's reconnect, as HAProxy logged it: {line:?}"
            );
            redispatched += usize::from(line.redispatched());
        }
        drop(unmoved_clients);

        missed.sort_unstable();
        let (min, median, max) = (
            missed[0],
            missed[missed.len() / 2],
            missed[missed.len() - 1],
        );
        eprintln!(
            "scale_out: rolling restart at {RATE} publications/s: {} clients moved (all \
             reconnected {} ms after /readyz 503); publications missed per moved client: min \
             {min}, median {median}, max {max}; the {} clients not moved missed none; \
             {redispatched} reconnects were sent to the draining instance first and retried \
             elsewhere by HAProxy",
            missed.len(),
            all_moved.as_millis(),
            CLIENTS - missed.len()
        );
        // Without history a move lost what was published between the close and the new
        // subscription (measured at 50/s before resuming: median 3, max 9); resuming with
        // `since` loses nothing.
        assert_eq!(max, 0, "a moved client missed {max} publications");
    }

    /// Publishes the next sequence number (`fin` marks the last) through `FCALL
    /// herald_publish`; returns it.
    async fn publish_next(&self, fin: bool) -> u64 {
        let next = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let payload = json!({"seq": next, "fin": fin}).to_string();
        let offset = self.redis.herald_publish(CHANNEL, payload).await;
        assert!(offset.is_some(), "{CHANNEL} keeps history: an offset");
        next
    }
}

/// What every client task shares with the test: per-client progress, and a wake-up on
/// each change, so the test awaits events instead of polling its own clients.
struct Fleet {
    clients: Vec<Tracked>,
    changed: Notify,
    /// Anything a client saw that it must not: a wrong frame or close, a failed reconnect.
    failures: Mutex<Vec<String>>,
}

#[derive(Default)]
struct Tracked {
    last_seq: AtomicU64,
    connected: AtomicBool,
    /// Closes with 1001 going away received.
    moves: AtomicU32,
    /// Reconnect attempts refused (an HTTP status) or failed.
    refused: AtomicU32,
    /// `gap` frames on the channel (contract 1.1: one per Redis outage).
    gaps: AtomicU32,
}

impl Tracked {
    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

impl Fleet {
    fn new(size: usize) -> Fleet {
        Fleet {
            clients: (0..size).map(|_| Tracked::default()).collect(),
            changed: Notify::new(),
            failures: Mutex::default(),
        }
    }

    fn fail(&self, failure: String) {
        self.failures.lock().unwrap().push(failure);
        self.changed.notify_waiters();
    }

    fn total(&self, count: impl Fn(&Tracked) -> u32) -> u32 {
        self.clients.iter().map(count).sum()
    }

    /// Waits until `check` passes, re-checking on every client event; fails at once on a
    /// client failure, and on timeout with what `check` last saw.
    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Fleet) -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let failures = self.failures.lock().unwrap().clone();
            assert!(
                failures.is_empty(),
                "while waiting for {what}, clients failed: {failures:#?}"
            );
            let seen = match check(self) {
                Ok(()) => return,
                Err(seen) => seen,
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out after {timeout:?} waiting for {what}; last saw: {seen}");
            }
        }
    }

    async fn wait_all_reached(&self, seq: u64, what: &str, timeout: Duration) {
        let what = format!("every client to receive {what} (seq {seq})");
        self.wait(&what, timeout, |f| {
            let behind: Vec<(usize, u64, bool)> = f
                .clients
                .iter()
                .enumerate()
                .map(|(i, c)| (i, c.last_seq.load(Ordering::SeqCst), c.is_connected()))
                .filter(|(_, last, _)| *last < seq)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            Err(format!(
                "{} of {} clients behind; first (client, last seq, connected): {:?}",
                behind.len(),
                f.clients.len(),
                &behind[..behind.len().min(5)]
            ))
        })
        .await;
    }
}

/// What one client received: the sequence numbers of each of its connections, in order;
/// and its last connection, still open.
struct ClientLog {
    segments: Vec<Vec<u64>>,
    client: Client,
}

/// Reads publications until the one marked `fin`, keeping the last offset. On 1001 it
/// completes the close handshake, reconnects through HAProxy (`url`, no query) and
/// subscribes with `since` that offset, as a real client would, retrying a refusal with
/// capped backoff. Anything unexpected is reported to the fleet.
async fn run_client(index: usize, mut client: Client, url: String, fleet: Arc<Fleet>) -> ClientLog {
    let me = &fleet.clients[index];
    let mut segments = vec![Vec::new()];
    let mut offset = None;
    loop {
        let frame = client.ws.next().await;
        match frame {
            Some(Ok(Message::Text(text)))
                if serde_json::from_str::<Value>(text.as_str())
                    .is_ok_and(|v| v["op"] == "gap" && v["channel"] == CHANNEL) =>
            {
                me.gaps.fetch_add(1, Ordering::SeqCst);
            }
            Some(Ok(Message::Text(text))) => {
                let publication = serde_json::from_str::<Value>(text.as_str())
                    .ok()
                    .filter(|v| v["op"] == "message" && v["channel"] == CHANNEL)
                    .and_then(|v| {
                        let seq = v["data"]["seq"].as_u64()?;
                        Some((
                            seq,
                            v["data"]["fin"] == true,
                            v["offset"].as_str()?.to_owned(),
                        ))
                    });
                let Some((seq, fin, at)) = publication else {
                    fleet.fail(format!("client {index}: unexpected frame {text}"));
                    break;
                };
                offset = Some(at);
                segments.last_mut().expect("a segment").push(seq);
                me.last_seq.store(seq, Ordering::SeqCst);
                fleet.changed.notify_waiters();
                if fin {
                    break;
                }
            }
            Some(Ok(Message::Close(Some(close)))) if u16::from(close.code) == 1001 => {
                me.moves.fetch_add(1, Ordering::SeqCst);
                me.connected.store(false, Ordering::SeqCst);
                fleet.changed.notify_waiters();
                // tungstenite sends the close reply when polled; the server then ends the
                // connection.
                let finish = async { while let Some(Ok(_)) = client.ws.next().await {} };
                let _ = tokio::time::timeout(secs(5), finish).await;
                let Some(since) = &offset else {
                    fleet.fail(format!("client {index}: moved before any offset"));
                    break;
                };
                match reconnect(&url, since, me).await {
                    Ok(again) => client = again,
                    Err(e) => {
                        fleet.fail(format!("client {index}: {e}"));
                        break;
                    }
                }
                segments.push(Vec::new());
                me.connected.store(true, Ordering::SeqCst);
                fleet.changed.notify_waiters();
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => {
                fleet.fail(format!("client {index}: unexpected {other:?}"));
                break;
            }
        }
    }
    ClientLog { segments, client }
}

/// Connects again with capped exponential backoff, then resumes from `since`.
async fn reconnect(url: &str, since: &str, me: &Tracked) -> Result<Client, String> {
    let mut delay = millis(50);
    let mut failures = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(secs(10), try_connect(url)).await {
            Ok(Ok(ws)) => return resumed(ws, since).await,
            Ok(Err(tungstenite::Error::Http(response))) => {
                failures.push(format!("HTTP {}", response.status()))
            }
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("connect timed out after 10s".to_owned()),
        }
        me.refused.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(secs(1));
    }
    Err(format!("could not reconnect: {failures:?}"))
}

/// After the welcome, subscribes with `since`; the `ok` must say it recovered. What was
/// missed follows the `ok`, read by the caller like any publication.
async fn resumed(mut ws: Ws, since: &str) -> Result<Client, String> {
    let welcome = next_json(&mut ws, "welcome").await?;
    if welcome["op"] != "welcome" || welcome["channels"] != json!([]) {
        return Err(format!("reconnected, but the first frame was {welcome}"));
    }
    let subscribe =
        json!({"op": "subscribe", "id": 1, "channels": [CHANNEL], "since": {CHANNEL: since}});
    let sent = tokio::time::timeout(
        secs(5),
        ws.send(Message::Text(subscribe.to_string().into())),
    );
    match sent.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("resubscribe: {e}")),
        Err(_) => return Err("resubscribe: not sent within 5s".to_owned()),
    }
    let ok = next_json(&mut ws, "the resubscribe's ok").await?;
    // Recovered, standing where it asked to resume from.
    let expected = json!({"op": "ok", "id": 1, "channels": [CHANNEL],
        "recovered": {CHANNEL: true}, "offsets": {CHANNEL: subscribe["since"][CHANNEL]}});
    if ok != expected {
        return Err(format!("{subscribe} was answered {ok}"));
    }
    Ok(Client { ws, welcome })
}

/// The next text frame as JSON, within 5s; `what` names it in the error.
async fn next_json(ws: &mut Ws, what: &str) -> Result<Value, String> {
    loop {
        match tokio::time::timeout(secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(text.as_str()).map_err(|e| e.to_string())
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => return Err(format!("instead of {what}: {other:?}")),
            Err(_) => return Err(format!("no {what} within 5s")),
        }
    }
}

/// Publishes sequence numbers through `FCALL herald_publish` at RATE per second, each
/// after the previous one was accepted (so Redis's order is the sequence), until `stop`.
async fn publish_steadily(url: String, seq: Arc<AtomicU64>, stop: CancellationToken) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("publisher's redis connection");
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let next = seq.fetch_add(1, Ordering::SeqCst) + 1;
        let _: String = redis::cmd("FCALL")
            .arg("herald_publish")
            .arg(1)
            .arg(CHANNEL)
            .arg(json!({"seq": next, "fin": false}).to_string())
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("FCALL herald_publish seq {next}: {e}"));
    }
}

/// Samples herald_connections_total at `url` every 100ms until the instance stops
/// answering (it exited); returns how many samples and the largest value seen.
async fn watch_accepted(url: String) -> (usize, f64) {
    let (mut samples, mut max) = (0, 0.0_f64);
    let deadline = Instant::now() + secs(20);
    while Instant::now() < deadline {
        let Ok((200, body)) = http::get(&url).await else {
            break;
        };
        let scrape = Scrape::parse(&body);
        max = max.max(scrape.value("herald_connections_total", &[]));
        samples += 1;
        tokio::time::sleep(millis(100)).await;
    }
    (samples, max)
}

/// The client's side of its TCP connection: how HAProxy's log names it.
fn local_addr(client: &Client) -> SocketAddr {
    match client.ws.get_ref() {
        MaybeTlsStream::Plain(stream) => stream.local_addr().expect("local address"),
        _ => panic!("a TLS stream to HAProxy?"),
    }
}

/// `seqs` must be exactly `from..=to`: no gap, no duplicate, in order.
fn contiguous(seqs: &[u64], from: u64, to: u64) -> Result<(), String> {
    let mut expected = from;
    for (i, &seq) in seqs.iter().enumerate() {
        if seq != expected {
            let around = &seqs[i.saturating_sub(3)..(i + 3).min(seqs.len())];
            return Err(format!(
                "expected seq {expected} at position {i}, got {seq} (around: {around:?})"
            ));
        }
        expected += 1;
    }
    if expected != to + 1 {
        return Err(format!("ended at {}, expected {to}", expected - 1));
    }
    Ok(())
}

async fn gauges(gateways: &[Gateway], name: &str) -> Vec<f64> {
    let mut values = Vec::new();
    for gw in gateways {
        values.push(gw.metrics().await.value(name, &[]));
    }
    values
}

async fn totals(gateways: &[Gateway]) -> f64 {
    gauges(gateways, "herald_connections_total")
        .await
        .iter()
        .sum()
}

/// PUBSUB NUMSUB `channel`: how many subscriber connections hold it.
async fn numsub(redis: &Redis, channel: &str) -> i64 {
    let reply = redis.raw(&["PUBSUB", "NUMSUB", channel]).await;
    match reply {
        redis::Value::Array(items) if items.len() == 2 => match items[1] {
            redis::Value::Int(n) => n,
            ref other => panic!("NUMSUB count {other:?}"),
        },
        other => panic!("PUBSUB NUMSUB reply {other:?}"),
    }
}

async fn wait_numsub(redis: &Redis, expected: i64, timeout: Duration) {
    let what = format!("PUBSUB NUMSUB {CHANNEL} == {expected}");
    eventually(&what, timeout, async || {
        expect_eq(numsub(redis, CHANNEL).await, &expected)
    })
    .await;
}

/// (instance, value) pairs of a query result, sorted.
fn by_instance(result: Result<Vec<Series>, String>) -> Result<Vec<(String, f64)>, String> {
    let mut pairs: Vec<(String, f64)> = result?
        .into_iter()
        .map(|s| {
            (
                s.labels.get("instance").cloned().unwrap_or_default(),
                s.value,
            )
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(pairs)
}
