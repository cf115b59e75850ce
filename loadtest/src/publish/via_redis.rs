//! PUBLISH (or FCALL herald_publish) through one multiplexed Redis connection; a batch is
//! one pipeline, one round trip, so the publisher keeps up with rates far above one
//! publication per RTT.
//!
//! `FCALL herald_publish 1 <channel> <payload>` is contract 1.1's way to publish on a
//! history channel: one atomic step that keeps the publication and delivers it, returning
//! its offset (ignored here; the clients read offsets from their frames).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo};

use super::Sequences;
use crate::cli::PublishVia;
use crate::stamp::{encode, now_ns};

pub struct RedisPublisher {
    con: MultiplexedConnection,
    /// Redis channel name per channel index.
    names: Vec<String>,
    via: PublishVia,
}

impl RedisPublisher {
    pub async fn connect(
        url: &str,
        names: Vec<String>,
        via: PublishVia,
    ) -> Result<RedisPublisher, String> {
        Ok(RedisPublisher {
            con: connect(url).await?,
            names,
            via,
        })
    }

    pub async fn send(&mut self, batch: &[u32], seqs: &mut Sequences) -> Result<(), String> {
        let t = now_ns();
        let mut pipe = redis::pipe();
        for &channel in batch {
            let payload = encode(t, seqs.take(channel), channel);
            let name = &self.names[channel as usize];
            add(&mut pipe, self.via, "PUBLISH", name, payload);
        }
        pipe.query_async::<()>(&mut self.con)
            .await
            .map_err(|e| failed(self.via, "PUBLISH", &e))
    }
}

/// What a failed batch says: the command (`plain`: PUBLISH or SPUBLISH) and why.
/// Adds one publication to `pipe`: `plain` (PUBLISH, or SPUBLISH on a Cluster) or
/// `FCALL herald_publish`, its reply ignored.
pub(super) fn add(
    pipe: &mut redis::Pipeline,
    via: PublishVia,
    plain: &str,
    name: &str,
    payload: String,
) {
    match via {
        PublishVia::Publish => pipe.cmd(plain).arg(name).arg(payload).ignore(),
        PublishVia::Fcall => pipe
            .cmd("FCALL")
            .arg("herald_publish")
            .arg(1)
            .arg(name)
            .arg(payload)
            .ignore(),
    };
}

pub(super) fn failed(via: PublishVia, plain: &str, e: &redis::RedisError) -> String {
    match via {
        PublishVia::Publish => format!("{plain}: {e}"),
        // "Function not found": no Herald with history has loaded it into this Redis.
        PublishVia::Fcall => format!(
            "FCALL herald_publish: {e} (Herald loads the function at start; is a \
             Herald with history support running on this Redis?)"
        ),
    }
}

/// A multiplexed connection with deadlines fit for a loaded machine.
pub async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
    let info = url
        .into_connection_info()
        .map_err(|e| format!("redis url {url:?}: {e}"))?;
    connect_to(info, url).await
}

/// As `connect`, to `info`; `what` names it in the error.
pub async fn connect_to(info: ConnectionInfo, what: &str) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(info).map_err(|e| format!("redis at {what}: {e}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot connect to redis at {what}: {e}"))
}
