//! What the coordinator asks of Redis besides PUBLISH: are the channels subscribed (the
//! server subscribes asynchronously after confirming a client; on a Cluster, asked of
//! each channel's master), shut it down, is it back, and how many commands it has run
//! (INFO commandstats). Only the subscription check knows a Cluster: the scenarios that
//! need the rest refuse one (`run::single_redis_only`).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::cluster::{self, Cluster};
use crate::publish::connect;

/// PUBSUB NUMSUB takes this many names per call.
const NUMSUB_BATCH: usize = 1000;
/// How often the subscription and liveness polls ask again.
const POLL: Duration = Duration::from_millis(10);

/// How many of `names` have no subscriber on Redis.
pub async fn unsubscribed(
    con: &mut MultiplexedConnection,
    names: &[String],
) -> Result<usize, String> {
    let mut missing = 0;
    for chunk in names.chunks(NUMSUB_BATCH) {
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chunk)
            .query_async(con)
            .await
            .map_err(|e| format!("PUBSUB NUMSUB: {e}"))?;
        missing += counts.iter().filter(|(_, n)| *n == 0).count();
    }
    Ok(missing)
}

/// How many of `names` have no shard subscriber (SSUBSCRIBE, as Herald subscribes on a
/// Cluster) on the master that owns them. Each master is asked about its own channels
/// only: another master answers 0 for them (Redis 7.0.15), not MOVED.
pub async fn unsubscribed_shards(cluster: &mut Cluster, names: &[String]) -> Result<usize, String> {
    let mut missing = 0;
    for (master, owned) in cluster.split(names).into_iter().enumerate() {
        let con = &mut cluster.conns[master];
        for chunk in owned.chunks(NUMSUB_BATCH) {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(chunk)
                .query_async(con)
                .await
                .map_err(|e| format!("PUBSUB SHARDNUMSUB: {e}"))?;
            missing += counts.iter().filter(|(_, n)| *n == 0).count();
        }
    }
    Ok(missing)
}

/// Waits until every one of `names` has a subscriber (on a Cluster: a shard subscriber
/// on its master); returns how long that took.
pub async fn wait_subscribed(
    url: &str,
    names: &[String],
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut redis = if cluster::is_cluster(url) {
        Subscriptions::Cluster(Cluster::connect(url).await?)
    } else {
        Subscriptions::Single(connect(url).await?)
    };
    loop {
        let missing = match &mut redis {
            Subscriptions::Single(con) => unsubscribed(con, names).await?,
            Subscriptions::Cluster(cluster) => unsubscribed_shards(cluster, names).await?,
        };
        if missing == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!(
                "{missing} of {} channels still unsubscribed on Redis after {within:?}",
                names.len()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where `wait_subscribed` asks.
enum Subscriptions {
    Single(MultiplexedConnection),
    Cluster(Cluster),
}

/// SHUTDOWN NOSAVE, then waits until Redis no longer answers.
pub async fn shutdown(url: &str, within: Duration) -> Result<(), String> {
    let mut con = connect(url).await?;
    // Redis closes the connection instead of replying: an I/O error here is success.
    let _ = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async::<()>(&mut con)
        .await;
    let deadline = Instant::now() + within;
    while ping(url).await {
        if Instant::now() > deadline {
            return Err(format!(
                "redis at {url} still answers after SHUTDOWN NOSAVE"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Waits until Redis answers PING; returns the moment it first did.
pub async fn wait_up(url: &str, within: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + within;
    loop {
        if ping(url).await {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "redis at {url} did not come back within {within:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Calls per command since Redis started, from INFO commandstats (names lower case,
/// subcommands as `function|load`).
pub async fn command_calls(
    con: &mut MultiplexedConnection,
) -> Result<BTreeMap<String, u64>, String> {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .map_err(|e| format!("INFO commandstats: {e}"))?;
    Ok(parse_commandstats(&text))
}

/// `cmdstat_<name>:calls=N,usec=...` lines -> name: N.
pub fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Calls of each command between two INFO commandstats readings; commands that did not
/// run are left out, and so is INFO itself (the readings are ours).
pub fn calls_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, &n)| {
            (
                name.clone(),
                n.saturating_sub(*before.get(name).unwrap_or(&0)),
            )
        })
        .filter(|&(_, n)| n > 0)
        .collect()
}

async fn ping(url: &str) -> bool {
    let attempt = async {
        let mut con = connect(url).await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_read_and_subtracted() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_fcall:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=3,usec=1,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_function|load:calls=1,usec=900,usec_per_call=900.00,rejected_calls=0,failed_calls=0\r\n",
        );
        assert_eq!(before["fcall"], 10);
        assert_eq!(before["function|load"], 1);
        let after = parse_commandstats(
            "cmdstat_fcall:calls=15,usec=80\r\ncmdstat_fcall_ro:calls=4,usec=9\r\n\
             cmdstat_info:calls=5,usec=2\r\ncmdstat_function|load:calls=1,usec=900\r\n",
        );
        let delta = calls_between(&before, &after);
        assert_eq!(
            delta.into_iter().collect::<Vec<_>>(),
            vec![("fcall".into(), 5), ("fcall_ro".into(), 4)]
        );
    }
}
