//! The thread that reads the subscriber connection off the socket (redis-rs's connection
//! driver) and fans out each publication as it reads it (see `intake`).
//!
//! Apart from the subscriber thread, whose own work (resubscribing thousands of channels,
//! history reads, the probe) then never delays a publication.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{AsyncPushSender, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ProtocolVersion};

use super::intake::{Intake, Sender};

pub struct Io {
    runtime: tokio::runtime::Handle,
}

impl Io {
    /// Starts the thread; it lives as long as the process.
    pub fn spawn() -> std::io::Result<Io> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("herald-redis-io".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(Io { runtime: handle })
    }

    /// Opens a subscriber connection whose pushes go to `intake`, with its driver on this
    /// thread. `client` speaks RESP3: subscribing over a multiplexed connection takes it.
    pub async fn connect(
        &self,
        client: &redis::Client,
        intake: &Arc<Intake>,
        timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        self.connect_with(client, Sender(intake.clone()), timeout)
            .await
    }

    /// `connect` with the pushes going to `pushes` (a cluster link's, which also reports
    /// the connection's end and the server's own `sunsubscribe`).
    pub async fn connect_with(
        &self,
        client: &redis::Client,
        pushes: impl AsyncPushSender,
        timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        // Every command carries its own deadline (the reconciler's, the probe's).
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            .set_push_sender(pushes);
        let client = client.clone();
        let opening = async move {
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        match self.runtime.spawn(opening).await {
            Ok(result) => result,
            Err(e) => Err(redis::RedisError::from(std::io::Error::other(format!(
                "the redis io thread failed to connect: {e}"
            )))),
        }
    }
}

/// The same client speaking RESP3.
pub fn resp3(client: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(resp3))
}
