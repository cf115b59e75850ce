//! The set-up every scenario shares: check the limits, start the workers, wait for every
//! client to be confirmed and, for Herald, for Redis to carry every channel; then hand
//! the scenario a `Run` to measure with.

use std::time::Duration;

use crate::cli::{Common, PeerKind, PublishVia};
use crate::cluster;
use crate::fleet::{Fleet, Ready};
use crate::peer::Peer;
use crate::plan::{self, channel_name, Layout, Plan};
use crate::procfs;
use crate::publish::pace::{self, Control, Published, Stream};
use crate::publish::{Publisher, Sequences};
use crate::redis_ops;
use crate::report::{ConnectSummary, Phase, RunReport};
use crate::sources;
use crate::stamp;
use crate::tally::Latency;
use crate::usage::Window;
use crate::worker::FD_MARGIN;

pub struct Run {
    pub scenario: &'static str,
    pub common: Common,
    pub layout: Layout,
    pub clients: u32,
    pub fleet: Fleet,
    /// Subscribers per channel, over the clients that connected.
    pub audience: Vec<u64>,
    pub seqs: Sequences,
    publisher: Option<Publisher>,
    pub connect: ConnectSummary,
    pub phases: Vec<Phase>,
    pub warnings: Vec<String>,
    workers: usize,
}

impl Run {
    /// Connects `clients` laid out over channels by `layout`. `work` is how long the
    /// scenario itself should take, for the workers' own deadline.
    pub async fn start(
        scenario: &'static str,
        common: &Common,
        layout: Layout,
        clients: u32,
        work: Duration,
    ) -> Result<Run, String> {
        Run::start_with(scenario, common, layout, clients, work, None).await
    }

    /// As `start`; with `rejoin` (a target URL), the clients take part in a reconnect wave
    /// when the scenario starts one (`Fleet::start_wave`) and come back to that target.
    pub async fn start_with(
        scenario: &'static str,
        common: &Common,
        layout: Layout,
        clients: u32,
        work: Duration,
        rejoin: Option<&str>,
    ) -> Result<Run, String> {
        if clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if common.peer == PeerKind::Nchan && common.publish.is_some() {
            return Err("--publish is for Herald; Nchan is published to by HTTP POST".into());
        }
        if common.peer == PeerKind::Nchan && cluster::is_cluster(&common.redis) {
            return Err(
                "--redis redis+cluster://... is for Herald; Nchan is published to by HTTP \
                 POST and keeps its own Redis settings"
                    .into(),
            );
        }
        let peer = Peer::new(common.peer, &common.target)?;
        let rejoin = match rejoin {
            Some(target) => Some(Peer::new(common.peer, target)?),
            None => None,
        };
        let source_addrs = match &common.source_addrs {
            Some(raw) => sources::parse(raw)?,
            None => Vec::new(),
        };
        let ports = sources::ports_per_address() as u64 * source_addrs.len().max(1) as u64;
        if clients as u64 > ports {
            return Err(format!(
                "{clients} clients exceed the ~{ports} ephemeral ports of {} source address(es): \
                 give more with --source-addrs 127.0.0.2-127.0.0.9",
                source_addrs.len().max(1)
            ));
        }
        let workers = worker_count(common.workers, clients);
        let concurrency = common.connect_concurrency.div_ceil(workers).max(1);
        // A slice of clients connects in waves of `concurrency`, each wave bounded by the
        // connect timeout: the worst case, not the expected time.
        let waves = (clients as u64)
            .div_ceil(workers as u64)
            .div_ceil(concurrency as u64);
        let connect_budget = (common.connect_timeout * waves as u32).min(Duration::from_secs(900));
        let lifetime = connect_budget + work * 2 + Duration::from_secs(120);
        let plans: Vec<Plan> = plan::split(clients, workers)
            .into_iter()
            .map(|slice| Plan {
                peer: peer.clone(),
                layout,
                channel_prefix: common.channel_prefix.clone(),
                token: common.token.clone(),
                clients: slice,
                source_addrs: source_addrs.clone(),
                connect_concurrency: concurrency,
                connect_timeout_ms: common.connect_timeout.as_millis() as u64,
                lifetime_ms: lifetime.as_millis() as u64,
                not_before_ns: stamp::now_ns(),
                rejoin: rejoin.clone(),
            })
            .collect();

        eprintln!("{scenario}: connecting {clients} clients from {workers} worker process(es)");
        let window = Window::open(common.server_pid, Vec::new());
        let mut fleet = Fleet::spawn(&plans).await?;
        let ready = fleet
            .ready(connect_budget + Duration::from_secs(30))
            .await?;
        let usage = window.close(&ready.cpu_ticks);
        if ready.connected == 0 {
            return Err(format!("no client could connect: {:?}", ready.errors));
        }
        let audience = layout.audience(clients, |c| !ready.failed.contains(&c));
        let mut warnings = usage.warnings("connect");
        if !ready.failed.is_empty() {
            warnings.push(format!(
                "{} of {clients} clients failed to connect",
                ready.failed.len()
            ));
        }
        let redis_subscribed_after_s = match common.peer {
            PeerKind::Herald => {
                let names = redis_names(common, &audience);
                eprintln!(
                    "{scenario}: {} clients ready; waiting for Redis to carry {} channel(s)",
                    ready.connected,
                    names.len()
                );
                let took =
                    redis_ops::wait_subscribed(&common.redis, &names, common.subscribe_timeout)
                        .await?;
                Some(took.as_secs_f64())
            }
            PeerKind::Nchan => None,
        };
        let connect = summary(&ready, usage, redis_subscribed_after_s);
        Ok(Run {
            scenario,
            common: common.clone(),
            layout,
            clients,
            fleet,
            audience,
            seqs: Sequences::new(layout.channel_count()),
            publisher: None,
            connect,
            phases: Vec::new(),
            warnings,
            workers,
        })
    }

    /// Publishes `streams` for `duration`; the publisher connects on first use.
    pub async fn publish(
        &mut self,
        streams: &[Stream],
        duration: Duration,
    ) -> Result<Published, String> {
        let channels = self.layout.channel_count();
        if self.publisher.is_none() {
            self.publisher = Some(Publisher::connect(&self.common, channels).await?);
        }
        let publisher = self.publisher.as_mut().expect("connected above");
        Ok(pace::run(publisher, &mut self.seqs, streams, duration, channels).await)
    }

    /// Publishes `streams` while `during` drives the fleet; publishing stops when `during`
    /// returns, or after `max`.
    pub async fn publish_during<T>(
        &mut self,
        streams: &[Stream],
        max: Duration,
        during: impl AsyncFnOnce(&mut Fleet, &Control) -> T,
    ) -> Result<(Published, T), String> {
        let channels = self.layout.channel_count();
        if self.publisher.is_none() {
            self.publisher = Some(Publisher::connect(&self.common, channels).await?);
        }
        let publisher = self.publisher.as_mut().expect("connected above");
        let control = Control::default();
        let publishing =
            pace::run_until(publisher, &mut self.seqs, streams, max, channels, &control);
        let alongside = async {
            let out = during(&mut self.fleet, &control).await;
            control.stop.set(true);
            out
        };
        Ok(tokio::join!(publishing, alongside))
    }

    /// Publishes once on each of `channels`, at once.
    pub async fn publish_once(&mut self, channels: &[u32]) -> Result<(), String> {
        if self.publisher.is_none() {
            let count = self.layout.channel_count();
            self.publisher = Some(Publisher::connect(&self.common, count).await?);
        }
        let publisher = self.publisher.as_mut().expect("connected above");
        for batch in channels.chunks(1000) {
            publisher.send(batch, &mut self.seqs).await?;
        }
        Ok(())
    }

    /// Drops the publisher so the next use reconnects (after a Redis restart).
    pub fn reconnect_publisher(&mut self) {
        self.publisher = None;
    }

    /// Stops the workers and assembles the report.
    pub async fn finish(
        self,
        clean: bool,
        result: Option<serde_json::Value>,
        result_text: Vec<String>,
    ) -> RunReport {
        self.fleet.exit().await;
        let clean = clean && self.connect.failed == 0;
        RunReport {
            scenario: self.scenario,
            peer: format!("{:?}", self.common.peer).to_lowercase(),
            publish: match self.common.peer {
                PeerKind::Herald => self.common.publish.unwrap_or(PublishVia::Publish).name(),
                PeerKind::Nchan => "post",
            },
            redis: redis_kind(&self.common),
            target: self.common.target.clone(),
            clients: self.clients,
            workers: self.workers,
            connect: self.connect,
            phases: self.phases,
            result,
            result_text,
            clean,
            warnings: self.warnings,
        }
    }
}

/// `single` or `cluster`: the Redis `--redis` names (the report's `redis`).
pub fn redis_kind(common: &Common) -> &'static str {
    if cluster::is_cluster(&common.redis) {
        "cluster"
    } else {
        "single"
    }
}

/// Refuses a Redis Cluster for a scenario that needs one redis-server (it shuts Redis
/// down, reads INFO commandstats, or publishes from its own connections); `needs` says
/// what for.
pub fn single_redis_only(common: &Common, scenario: &str, needs: &str) -> Result<(), String> {
    if !cluster::is_cluster(&common.redis) {
        return Ok(());
    }
    Err(format!(
        "{scenario} runs against a single Redis only: it {needs}. On a Redis Cluster \
         (--redis redis+cluster://...) run fanout, channels, saturate, idle or connect"
    ))
}

/// Redis names of the channels that have at least one connected subscriber.
pub fn redis_names(common: &Common, audience: &[u64]) -> Vec<String> {
    audience
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(c, _)| {
            format!(
                "{}{}",
                common.redis_channel_prefix,
                channel_name(&common.channel_prefix, c as u32)
            )
        })
        .collect()
}

/// The asked number of workers, or enough to keep each under the open-files limit.
fn worker_count(asked: usize, clients: u32) -> usize {
    if asked > 0 {
        return asked;
    }
    let limit = procfs::open_files_limit().unwrap_or(1024).min(1 << 20);
    let per_worker = limit.saturating_sub(FD_MARGIN + 192).max(1);
    (clients as u64).div_ceil(per_worker).max(1) as usize
}

fn summary(
    ready: &Ready,
    usage: crate::usage::Usage,
    redis_subscribed_after_s: Option<f64>,
) -> ConnectSummary {
    let elapsed_s = ready.elapsed.as_secs_f64();
    ConnectSummary {
        connected: ready.connected,
        failed: ready.failed.len() as u32,
        errors: ready.errors.clone(),
        elapsed_s,
        per_s: ready.connected as f64 / elapsed_s.max(1e-9),
        latency_ms: Latency::of(&ready.connect_latency),
        redis_subscribed_after_s,
        usage,
    }
}
