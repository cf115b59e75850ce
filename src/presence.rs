//! Each instance's channel counts in Redis, for the server API's `scope=cluster`.
//!
//! Every instance keeps one hash, `<prefix>herald:{presence}:<instance>` (channel ->
//! local subscribers), that expires unless rewritten within 3 intervals, and lists itself
//! in the set `<prefix>herald:{presence}:instances`. An instance that dies stops counting
//! when its hash expires; readers drop it from the set then. (The `{presence}` hash tag
//! keeps every key in one slot of a Redis Cluster.)
//!
//! Cost, with C channels held locally: each interval writes only what changed since the
//! last write (HSET and HDEL of those fields) plus a PEXPIRE and an SADD: two round
//! trips, and nothing per channel while counts stand still. A full rewrite (C fields, in
//! HSETs of 1,000) happens only at start and when the hash was lost (Redis restarted or
//! evicted it). A cluster-wide read is one HGETALL
//! (or HGET) per live instance, pipelined.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::RedisResult;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::channel::Prefix;
use crate::hub::Hub;
use crate::readiness::Readiness;
use crate::redis::Commands;

/// Fields per HSET or HDEL when writing many.
const CHUNK: usize = 1000;

pub struct Presence {
    hub: Arc<Hub>,
    /// Writes wait for the subscriber connection: while it is down (refused credentials
    /// above all) they would be one more failed AUTH per interval.
    readiness: Arc<Readiness>,
    redis: Commands,
    interval: Duration,
    /// This instance's hash.
    key: String,
    /// The set of instances.
    instances: String,
    prefix_key: String,
    instance: String,
}

/// What this instance's hash holds, as last written (`None`: rewrite it whole).
type Written = Option<HashMap<String, u64>>;

impl Presence {
    pub fn new(
        hub: Arc<Hub>,
        readiness: Arc<Readiness>,
        redis: Commands,
        prefix: &Prefix,
        interval: Duration,
    ) -> Presence {
        let instance = format!("{:016x}", rand::random::<u64>());
        let prefix_key = format!("{}herald:{{presence}}:", prefix.as_str());
        Presence {
            hub,
            readiness,
            redis,
            interval,
            key: format!("{prefix_key}{instance}"),
            instances: format!("{prefix_key}instances"),
            prefix_key,
            instance,
        }
    }

    /// Writes this instance's counts every interval until `stop`, then removes them.
    pub async fn run(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut written: Written = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !self.readiness.is_redis_up() {
                continue;
            }
            match self.write(&mut written).await {
                Ok(()) => failing = false,
                Err(e) => {
                    // Once per failing stretch: Redis being down is logged elsewhere.
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, "could not write channel counts to redis");
                    }
                    written = None;
                }
            }
        }
        let mut conn = self.redis.clone();
        let mut pipe = ::redis::pipe();
        pipe.del(&self.key)
            .ignore()
            .srem(&self.instances, &self.instance)
            .ignore();
        let left: RedisResult<()> = pipe.query_async(&mut conn).await;
        debug!(ok = left.is_ok(), "channel counts removed from redis");
    }

    /// One round: what changed (or everything), and the expiry renewed.
    async fn write(&self, written: &mut Written) -> RedisResult<()> {
        let mut conn = self.redis.clone();
        let ttl = (self.interval * 3).as_millis() as u64;
        // Still there? A hash Redis lost (restart, eviction) must be written whole.
        let alive: bool = ::redis::cmd("PEXPIRE")
            .arg(&self.key)
            .arg(ttl)
            .query_async(&mut conn)
            .await?;
        let now: HashMap<String, u64> = self
            .hub
            .counts()
            .into_iter()
            .map(|(name, n)| (name.to_string(), n as u64))
            .collect();
        let before = match written.take() {
            Some(before) if alive || before.is_empty() => before,
            _ => HashMap::new(),
        };
        let mut pipe = ::redis::pipe();
        if before.is_empty() {
            pipe.del(&self.key).ignore();
        }
        let changed: Vec<(&String, &u64)> = now
            .iter()
            .filter(|(name, n)| before.get(*name) != Some(n))
            .collect();
        for chunk in changed.chunks(CHUNK) {
            pipe.hset_multiple(&self.key, chunk).ignore();
        }
        let gone: Vec<&String> = before
            .keys()
            .filter(|name| !now.contains_key(*name))
            .collect();
        for chunk in gone.chunks(CHUNK) {
            pipe.hdel(&self.key, chunk).ignore();
        }
        pipe.cmd("PEXPIRE").arg(&self.key).arg(ttl).ignore();
        pipe.sadd(&self.instances, &self.instance).ignore();
        let () = pipe.query_async(&mut conn).await?;
        *written = Some(now);
        Ok(())
    }

    /// Every other live instance's counts, summed per channel.
    pub async fn others(&self) -> RedisResult<HashMap<String, u64>> {
        let mut conn = self.redis.clone();
        let ids = self.other_instances(&mut conn).await?;
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.hgetall(format!("{}{id}", self.prefix_key));
        }
        let hashes: Vec<HashMap<String, u64>> = pipe.query_async(&mut conn).await?;
        self.forget_dead(&mut conn, &ids, hashes.iter().map(HashMap::is_empty))
            .await;
        let mut sum = HashMap::new();
        for (name, n) in hashes.into_iter().flatten() {
            *sum.entry(name).or_default() += n;
        }
        Ok(sum)
    }

    /// Every other live instance's subscribers of `channel`.
    pub async fn others_for(&self, channel: &str) -> RedisResult<u64> {
        let mut conn = self.redis.clone();
        let ids = self.other_instances(&mut conn).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.hget(format!("{}{id}", self.prefix_key), channel);
        }
        let counts: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        Ok(counts.into_iter().flatten().sum())
    }

    async fn other_instances(&self, conn: &mut Commands) -> RedisResult<Vec<String>> {
        let mut ids: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(&self.instances)
            .query_async(conn)
            .await?;
        ids.retain(|id| *id != self.instance);
        Ok(ids)
    }

    /// Drops from the set the instances whose hash expired (a live one with no channels
    /// has none either; it lists itself again at its next write).
    async fn forget_dead(
        &self,
        conn: &mut Commands,
        ids: &[String],
        empty: impl Iterator<Item = bool>,
    ) {
        let dead: Vec<&String> = ids
            .iter()
            .zip(empty)
            .filter(|(_, e)| *e)
            .map(|(id, _)| id)
            .collect();
        if dead.is_empty() {
            return;
        }
        let forgot: RedisResult<()> = ::redis::cmd("SREM")
            .arg(&self.instances)
            .arg(dead)
            .query_async(conn)
            .await;
        if let Err(e) = forgot {
            debug!(error = %e, "could not drop expired instances from the presence set");
        }
    }
}
