//! The command connection beside the subscriber: loads the `herald` function library and
//! reads history (`FCALL_RO herald_history`) and anchors channels (`FCALL herald_anchor`),
//! pipelined in batches.
//!
//! Publishing and subscribing never share a connection (on Redis 7.0 a RESP3 client that
//! publishes to a channel it subscribes gets the push before the reply: research notes 4.6).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::reconcile::{BatchError, BATCH};
use crate::channel::{Name, Prefix};
use crate::history::library::{self, TOP_ONLY};
use crate::history::sequence::Read;
use crate::history::{Epoch, Rules};
use crate::payload;

pub struct Store {
    conn: MultiplexedConnection,
    timeout: Duration,
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
        Ok(Store { conn, timeout })
    }

    /// Loads (or replaces) the library for these rules: at every connect, so a Redis that
    /// restarted without it has it again before any history is read.
    pub async fn load_library(&mut self, prefix: &Prefix, rules: &Rules) -> Result<(), BatchError> {
        let source = library::source(prefix.as_str(), rules);
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(source);
        let timeout = self.timeout;
        within(timeout, cmd.query_async::<Value>(&mut self.conn))
            .await
            .map(drop)
    }

    /// Whether the library is loaded: a `FUNCTION FLUSH`, or a Redis restarted in place
    /// without persistence under a proxy that kept the connection, leaves publishers'
    /// `FCALL herald_publish` failing until it is loaded again.
    pub async fn has_library(&mut self) -> Result<bool, BatchError> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LIST").arg("LIBRARYNAME").arg(library::NAME);
        let listed: Vec<Value> = within(self.timeout, cmd.query_async(&mut self.conn)).await?;
        Ok(!listed.is_empty())
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
            let mut pipe = redis::pipe();
            for (name, after) in batch {
                let (command, function) = match *after {
                    TOP_ONLY => ("FCALL", "herald_anchor"),
                    _ => ("FCALL_RO", "herald_history"),
                };
                pipe.cmd(command)
                    .arg(function)
                    .arg(1)
                    .arg(prefix.to_redis(name))
                    .arg(*after);
            }
            let replies: Vec<Value> =
                within(self.timeout, pipe.query_async(&mut self.conn)).await?;
            for ((name, _), reply) in batch.iter().zip(replies) {
                reads.push(decode(name, reply));
            }
        }
        Ok(reads)
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
