//! The command connection of the server API and of presence: connected when first used,
//! and dialled again, to wherever the target says the master is now, after a failure.
//!
//! In place of redis-rs's `ConnectionManager`, which re-dials the address it was built
//! with (research notes 4.4): after a failover that is the old master, dead or demoted.
//! A reply of READONLY (a demoted master refusing a write) drops the connection as a
//! broken one does, and so does a move of the master the subscriber saw
//! (`Locator::moved`); the next command asks the sentinels again. A failed command is not
//! retried here: after a lost connection nobody knows whether it ran (a PUBLISH twice
//! would be two publications), so the caller hears the error, as with the manager.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tracing::{info, warn};

use super::locate::{is_master, Locator};

/// Cheap to clone: every clone shares one connection.
#[derive(Clone)]
pub struct Commands(Arc<Shared>);

struct Shared {
    locator: Arc<Locator>,
    timeout: Duration,
    /// The connection in use; `None` before the first command and after a failure.
    current: Mutex<Option<Current>>,
    /// One dial at a time: callers arriving meanwhile take its connection.
    dialing: tokio::sync::Mutex<()>,
    dials: AtomicU64,
    /// The node of the last connection, to log a move to another.
    last: Mutex<Option<String>>,
}

#[derive(Clone)]
struct Current {
    /// Which dial made it: a failure drops this connection, never a newer one.
    dial: u64,
    /// `Locator::moves` when it was made.
    moves: u64,
    addr: String,
    conn: Conn,
}

/// One node's connection, or redis-rs's cluster connection (each command routed by its
/// key: the API's SPUBLISH and FCALL by channel, presence by its `{presence}` tag).
#[derive(Clone)]
enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Commands {
    /// Connects on first use; each connect and each command has `timeout`.
    pub fn new(locator: Arc<Locator>, timeout: Duration) -> Commands {
        Commands(Arc::new(Shared {
            locator,
            timeout,
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            dials: AtomicU64::new(0),
            last: Mutex::new(None),
        }))
    }

    /// The connection in use, unless the master moved since it was made.
    /// Whether Redis is a Cluster: publications then go out with SPUBLISH.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0.locator.target(), super::target::Target::Cluster(_))
    }

    fn current(&self) -> Option<Current> {
        let mut current = self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|c| c.moves != self.0.locator.moves())
        {
            *current = None;
        }
        current.clone()
    }

    async fn conn(&self) -> RedisResult<Current> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _dialing = self.0.dialing.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let timeout = self.0.timeout;
        let moves = self.0.locator.moves();
        if let Some(seeds) = self.0.locator.target().seeds() {
            return self.dial_cluster(seeds, moves).await;
        }
        let node = self
            .0
            .locator
            .master(timeout)
            .await
            .map_err(|e| other(e.to_string()))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let opening = node
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let mut conn = match tokio::time::timeout(timeout, opening).await {
            Ok(conn) => conn?,
            Err(_) => return Err(other(format!("connect to {}: timed out", node.addr))),
        };
        if node.check_role {
            is_master(&mut conn, timeout)
                .await
                .map_err(|e| other(format!("{}: {e}", node.addr)))?;
        }
        let dial = self.0.dials.fetch_add(1, Ordering::Relaxed);
        let mut last = self.0.last.lock().unwrap_or_else(PoisonError::into_inner);
        if node.check_role && last.as_deref() != Some(node.addr.as_str()) {
            info!(node = %node.addr, previous = last.as_deref().unwrap_or("none"), "redis commands go to the master the sentinels named");
        }
        *last = Some(node.addr.clone());
        drop(last);
        let current = Current {
            dial,
            moves,
            addr: node.addr,
            conn: Conn::One(conn),
        };
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
        Ok(current)
    }

    /// A Cluster: redis-rs's cluster connection follows MOVED and failovers itself.
    async fn dial_cluster(
        &self,
        seeds: Vec<redis::ConnectionInfo>,
        moves: u64,
    ) -> RedisResult<Current> {
        let timeout = self.0.timeout;
        let opening = super::topology::command_connection(&seeds, timeout, timeout);
        let conn = match tokio::time::timeout(timeout, opening).await {
            Ok(conn) => conn?,
            Err(_) => return Err(other("connect to the redis cluster: timed out".into())),
        };
        let current = Current {
            dial: self.0.dials.fetch_add(1, Ordering::Relaxed),
            moves,
            addr: "cluster".into(),
            conn: Conn::Cluster(conn),
        };
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
        Ok(current)
    }

    /// Drops `used` if the error means its node is gone or no longer the master.
    fn after(&self, used: &Current, broken: bool, cause: &dyn std::fmt::Display) {
        if !broken {
            return;
        }
        let mut current = self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.dial == used.dial) {
            *current = None;
            warn!(node = %used.addr, cause = %cause, "redis command connection lost; the next command dials again");
        }
    }
}

/// Whether an error means "this connection or node is no use any more".
fn broken(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_unrecoverable_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.code() == Some("READONLY")
}

fn readonly(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.code() == "READONLY")
}

fn other(message: String) -> RedisError {
    RedisError::from(std::io::Error::other(message))
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut used = self.conn().await?;
            let reply = used.conn.req_packed_command(cmd).await;
            match &reply {
                Err(e) => self.after(&used, broken(e), e),
                Ok(value) => self.after(&used, readonly(value), &"READONLY"),
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut used = self.conn().await?;
            let replies = used.conn.req_packed_commands(pipeline, offset, count).await;
            match &replies {
                Err(e) => self.after(&used, broken(e), e),
                Ok(values) => self.after(&used, values.iter().any(readonly), &"READONLY"),
            }
            replies
        })
    }

    fn get_db(&self) -> i64 {
        self.current().map_or(0, |c| c.conn.get_db())
    }
}
