//! What the coordinator asks of Redis besides PUBLISH: are the channels subscribed (the
//! server subscribes asynchronously after confirming a client), shut it down, and is it
//! back.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

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

/// Waits until every one of `names` has a subscriber; returns how long that took.
pub async fn wait_subscribed(
    url: &str,
    names: &[String],
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut con = connect(url).await?;
    loop {
        let missing = unsubscribed(&mut con, names).await?;
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
