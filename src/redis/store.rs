//! The command connection beside the subscriber: loads the `herald` function library and
//! reads history (`FCALL_RO herald_history`) and anchors channels (`FCALL herald_anchor`),
//! pipelined in batches.
//!
//! On a Redis Cluster it is redis-rs's cluster connection: each FCALL is routed by its key
//! (the channel's slot), FUNCTION LOAD goes to every primary.
//!
//! Publishing and subscribing never share a connection (on Redis 7.0 a RESP3 client that
//! publishes to a channel it subscribes gets the push before the reply: research notes 4.6).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{ConnectionInfo, Value};

use super::reconcile::{BatchError, BATCH};
use crate::channel::{Name, Prefix};
use crate::history::library::{self, TOP_ONLY};
use crate::history::sequence::Read;
use crate::history::{Epoch, Rules};
use crate::payload;

pub struct Store {
    conn: Conn,
    timeout: Duration,
}

enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Store {
    /// Connects within `connect`; each command then has `timeout`.
    pub async fn connect(
        client: &redis::Client,
        connect: Duration,
        timeout: Duration,
    ) -> Result<Store, BatchError> {
        // redis-rs gives up on a reply after 500ms by default; a resume's history read
        // (SIZE entries of any size) may take longer, and is bounded by `timeout` here.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(connect));
        let opening = client.get_multiplexed_async_connection_with_config(&config);
        let conn = within(connect, opening).await?;
        Ok(Store {
            conn: Conn::One(conn),
            timeout,
        })
    }

    /// `connect` to a Redis Cluster through its seed nodes.
    pub async fn connect_cluster(
        seeds: &[ConnectionInfo],
        connect: Duration,
        timeout: Duration,
    ) -> Result<Store, BatchError> {
        let opening = super::topology::command_connection(seeds, connect, timeout);
        let conn = within(connect, opening).await?;
        Ok(Store {
            conn: Conn::Cluster(conn),
            timeout,
        })
    }

    /// Loads (or replaces) the library for these rules: at every connect, so a Redis that
    /// restarted without it has it again before any history is read.
    pub async fn load_library(&mut self, prefix: &Prefix, rules: &Rules) -> Result<(), BatchError> {
        let sharded = matches!(self.conn, Conn::Cluster(_));
        let source = library::source(prefix.as_str(), rules, sharded);
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(source);
        // On a Cluster, redis-rs sends FUNCTION LOAD to every primary ("it is also
        // necessary to load functions to all cluster nodes": research notes 4.6).
        self.query::<Value>(cmd).await.map(drop)
    }

    /// Whether the library is loaded: a `FUNCTION FLUSH`, or a Redis restarted in place
    /// without persistence under a proxy that kept the connection, leaves publishers'
    /// `FCALL herald_publish` failing until it is loaded again.
    pub async fn has_library(&mut self) -> Result<bool, BatchError> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LIST").arg("LIBRARYNAME").arg(library::NAME);
        let Conn::Cluster(conn) = &mut self.conn else {
            let listed: Vec<Value> = self.query(cmd).await?;
            return Ok(!listed.is_empty());
        };
        // Every primary must have it (a new one after a failover or a resharding).
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let reply = within(self.timeout, conn.route_command(cmd, routing)).await?;
        let Value::Map(per_node) = reply else {
            return Ok(false);
        };
        Ok(per_node
            .iter()
            .all(|(_, listed)| matches!(listed, Value::Array(items) if !items.is_empty())))
    }

    /// Reads each channel's kept entries after its number (`TOP_ONLY`: anchors it, minting
    /// its epoch when it has none, and reads only the epoch and top), encoding every entry once as the frame its subscribers share.
    pub async fn read(
        &mut self,
        prefix: &Prefix,
        wanted: &[(Name, u64)],
    ) -> Result<Vec<Read>, BatchError> {
        let mut reads = Vec::with_capacity(wanted.len());
        for batch in wanted.chunks(BATCH) {
            let commands = batch.iter().map(|(name, after)| {
                let (command, function) = match *after {
                    TOP_ONLY => ("FCALL", "herald_anchor"),
                    _ => ("FCALL_RO", "herald_history"),
                };
                let mut cmd = redis::cmd(command);
                cmd.arg(function)
                    .arg(1)
                    .arg(prefix.to_redis(name))
                    .arg(*after);
                cmd
            });
            let replies: Vec<Value> = match &mut self.conn {
                Conn::One(conn) => {
                    let mut pipe = redis::pipe();
                    commands.for_each(|cmd| {
                        pipe.add_command(cmd);
                    });
                    within(self.timeout, pipe.query_async(conn)).await?
                }
                // Each to its channel's master, all at once: a pipeline would go to one.
                Conn::Cluster(conn) => {
                    let sent = commands.map(|cmd| {
                        let mut conn = conn.clone();
                        async move { cmd.query_async::<Value>(&mut conn).await }
                    });
                    let all = futures_util::future::join_all(sent);
                    let replies = within(self.timeout, async { Ok(all.await) }).await?;
                    replies
                        .into_iter()
                        .collect::<redis::RedisResult<_>>()
                        .map_err(BatchError::Redis)?
                }
            };
            for ((name, _), reply) in batch.iter().zip(replies) {
                reads.push(decode(name, reply));
            }
        }
        Ok(reads)
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: redis::Cmd) -> Result<T, BatchError> {
        match &mut self.conn {
            Conn::One(conn) => within(self.timeout, cmd.query_async(conn)).await,
            Conn::Cluster(conn) => within(self.timeout, cmd.query_async(conn)).await,
        }
    }
}

async fn within<T>(
    timeout: Duration,
    query: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BatchError> {
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(BatchError::Redis(e)),
        Err(_) => Err(BatchError::Timeout(timeout)),
    }
}

/// `{epoch or nil, top, n1, d1, n2, d2, ...}` as a `Read`; anything malformed reads as
/// "no history" (the library is ours, so that would be a bug, and a gap says so).
fn decode(name: &str, reply: Value) -> Read {
    let Value::Array(items) = reply else {
        return Read::default();
    };
    let mut items = items.into_iter();
    let epoch: Option<Epoch> = match items.next() {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(&bytes).ok().map(Epoch::from),
        _ => None,
    };
    let top = match items.next() {
        Some(Value::Int(top)) => top.max(0) as u64,
        _ => 0,
    };
    let mut entries = Vec::new();
    if let Some(epoch) = &epoch {
        while let (Some(Value::Int(n)), Some(Value::BulkString(data))) =
            (items.next(), items.next())
        {
            let n = n.max(0) as u64;
            entries.push((n, payload::message(name, &data, Some((epoch, n)))));
        }
    }
    Read {
        epoch,
        top,
        entries,
    }
}
