//! Talking to the sentinels: who is the master now, and the announcement that it changed.

use std::time::Duration;

use futures_util::StreamExt;
use tracing::debug;

use super::target::{host_port, Sentinels};
use super::TlsFiles;

/// Why no master address came from the sentinels.
#[derive(Debug)]
pub enum Unasked {
    /// Every sentinel that answered knows no master by this name (`SENTINEL
    /// GET-MASTER-ADDR-BY-NAME` answered nil): a wrong name, or sentinels not set up yet.
    UnknownMaster(String),
    /// No sentinel answered; the last error, per sentinel.
    NoAnswer(String),
}

impl std::fmt::Display for Unasked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unasked::UnknownMaster(name) => write!(f, "no sentinel knows a master named {name:?}"),
            Unasked::NoAnswer(errors) => write!(f, "no sentinel answered: {errors}"),
        }
    }
}

/// Asks each sentinel in turn for the master's address; the first that names one wins.
pub async fn master_addr(
    sentinels: &Sentinels,
    tls: &TlsFiles,
    timeout: Duration,
) -> Result<(String, u16), Unasked> {
    let mut errors = Vec::new();
    let mut unknown = false;
    for addr in &sentinels.addrs {
        let asked = async {
            let mut conn = connect(sentinels, addr, tls, timeout).await?;
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&sentinels.master)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(Some(found))) => return Ok(found),
            Ok(Ok(None)) => unknown = true,
            Ok(Err(e)) => errors.push(format!("{}: {e}", host_port(&addr.0, addr.1))),
            Err(_) => errors.push(format!(
                "{}: no answer within {timeout:?}",
                host_port(&addr.0, addr.1)
            )),
        }
    }
    if unknown {
        Err(Unasked::UnknownMaster(sentinels.master.clone()))
    } else {
        Err(Unasked::NoAnswer(errors.join("; ")))
    }
}

/// Resolves when a sentinel announces that the master moved to another node than `current`
/// (`+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`), with the
/// announcement; it never resolves otherwise.
///
/// Why listen rather than wait for the old master to drop Herald: a master that is still
/// alive after a failover (a manual `SENTINEL FAILOVER`, a partition) keeps its clients and
/// answers as a master until the sentinels reconfigure it. Measured on redis 7.0.15: a
/// subscriber on the old master was closed ("Server closed the connection", the sentinel's
/// `CLIENT KILL TYPE normal|pubsub` after its REPLICAOF) 10 s after `+switch-master`,
/// publications on the new master reaching it meanwhile never.
///
/// A sentinel lost here is replaced by the next, after `pause`; the master connection is
/// not touched for it.
pub async fn switched(
    sentinels: &Sentinels,
    tls: &TlsFiles,
    current: &str,
    timeout: Duration,
    pause: Duration,
) -> String {
    for addr in sentinels.addrs.iter().cycle() {
        match listen(sentinels, addr, tls, current, timeout).await {
            Ok(announced) => return announced,
            Err(e) => debug!(
                sentinel = %host_port(&addr.0, addr.1),
                error = %e,
                "listening for +switch-master failed; trying the next sentinel"
            ),
        }
        tokio::time::sleep(pause).await;
    }
    unreachable!("cycle over at least one sentinel never ends")
}

/// One sentinel's announcements; `Err` when its connection fails or ends.
async fn listen(
    sentinels: &Sentinels,
    addr: &(String, u16),
    tls: &TlsFiles,
    current: &str,
    timeout: Duration,
) -> redis::RedisResult<String> {
    let client = super::client_for(&sentinels.sentinel_url(addr), tls)?;
    let mut pubsub = within(timeout, client.get_async_pubsub()).await?;
    within(timeout, pubsub.subscribe("+switch-master")).await?;
    // A switch between asking for the master and subscribing was announced unheard: ask
    // again, now that nothing more can be missed.
    let mut conn = connect(sentinels, addr, tls, timeout).await?;
    let named: Option<(String, u16)> = within(
        timeout,
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&sentinels.master)
            .query_async(&mut conn),
    )
    .await?;
    drop(conn);
    if let Some((host, port)) = named {
        let named = host_port(&host, port);
        if named != current {
            return Ok(format!("{} {current} {named}", sentinels.master));
        }
    }
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(payload) = message.get_payload::<String>() else {
            continue;
        };
        // Herald may be on the new master already: a connection lost in the failover was
        // dialled again, to whatever the sentinels named, before this announcement came.
        let fields: Vec<&str> = payload.split(' ').collect();
        if let [name, _, _, host, port] = fields[..] {
            let moved_to = host_port(host, port.parse().unwrap_or(0));
            if name == sentinels.master && moved_to != current {
                return Ok(payload);
            }
        }
    }
    Err(redis::RedisError::from(std::io::Error::other(
        "the sentinel closed the connection",
    )))
}

async fn connect(
    sentinels: &Sentinels,
    addr: &(String, u16),
    tls: &TlsFiles,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = super::client_for(&sentinels.sentinel_url(addr), tls)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(timeout, work).await {
        Ok(done) => done,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ))),
    }
}
