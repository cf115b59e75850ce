//! PUBLISH through one multiplexed Redis connection; a batch is one pipeline, one round
//! trip, so the publisher keeps up with rates far above one publication per RTT.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::Sequences;
use crate::stamp::{encode, now_ns};

pub struct RedisPublisher {
    con: MultiplexedConnection,
    /// Redis channel name per channel index.
    names: Vec<String>,
}

impl RedisPublisher {
    pub async fn connect(url: &str, names: Vec<String>) -> Result<RedisPublisher, String> {
        Ok(RedisPublisher {
            con: connect(url).await?,
            names,
        })
    }

    pub async fn send(&mut self, batch: &[u32], seqs: &mut Sequences) -> Result<(), String> {
        let t = now_ns();
        let mut pipe = redis::pipe();
        for &channel in batch {
            let payload = encode(t, seqs.take(channel), channel);
            pipe.cmd("PUBLISH")
                .arg(&self.names[channel as usize])
                .arg(payload)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.con)
            .await
            .map_err(|e| format!("PUBLISH: {e}"))
    }
}

/// A multiplexed connection with deadlines fit for a loaded machine.
pub async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis url {url:?}: {e}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot connect to redis at {url}: {e}"))
}
