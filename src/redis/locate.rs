//! Which node to dial now: the one URL of a single node, or the master the sentinels name,
//! asked again at every connect (a failover moves it; redis-rs would re-dial the old one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Value;

use super::sentinel::{self, Unasked};
use super::target::{host_port, Target};
use super::{io, TlsFiles};

/// A node to connect to.
#[derive(Clone)]
pub struct Node {
    /// `host:port`, for logs.
    pub addr: String,
    /// For commands (RESP2).
    pub client: redis::Client,
    /// The same node speaking RESP3, for the subscriber connection.
    pub pubsub: redis::Client,
    /// Named by sentinels: must answer `ROLE` as a master before it is used.
    pub check_role: bool,
}

/// Why no node could be chosen.
#[derive(Debug)]
pub enum Unlocated {
    Sentinels(Unasked),
    /// The address the sentinels gave makes no client (it would be a sentinel's bug).
    Redis(redis::RedisError),
}

impl std::fmt::Display for Unlocated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlocated::Sentinels(e) => write!(f, "{e}"),
            Unlocated::Redis(e) => write!(f, "{e}"),
        }
    }
}

pub struct Locator {
    target: Target,
    tls: TlsFiles,
    /// The single node's clients, made once (a bad URL fails at startup, as before).
    single: Option<Node>,
    /// Counts the master moves the subscriber saw: a command connection made before the
    /// last one is on the old master. That one may still answer as a master for seconds
    /// after the switch (10 s measured, `sentinel::switched`), so a command sent there
    /// would succeed where no instance listens.
    moves: AtomicU64,
}

impl Locator {
    pub fn new(target: Target, tls: TlsFiles) -> redis::RedisResult<Locator> {
        let single = match &target {
            Target::Single(url) => Some(node(single_addr(url), url, &tls, false)?),
            // The cluster's links and clients are made from its seeds (`shards`, `commands`).
            Target::Cluster(_) => None,
            Target::Sentinel(s) => {
                // The same checks for the sentinel URLs and a node URL at startup.
                for addr in &s.addrs {
                    super::client_for(&s.sentinel_url(addr), &tls)?;
                }
                super::client_for(&s.node_url("localhost", 6379), &tls)?;
                None
            }
        };
        Ok(Locator {
            target,
            tls,
            single,
            moves: AtomicU64::new(0),
        })
    }

    /// The master moved: command connections made before are to be replaced.
    pub fn moved(&self) {
        self.moves.fetch_add(1, Ordering::Release);
    }

    /// How many moves were seen: a connection made at an older count is to be replaced.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn tls(&self) -> &TlsFiles {
        &self.tls
    }

    /// The node to dial now: asks the sentinels each time for a sentinel target.
    pub async fn master(&self, timeout: Duration) -> Result<Node, Unlocated> {
        if let Some(single) = &self.single {
            return Ok(single.clone());
        }
        let Target::Sentinel(sentinels) = &self.target else {
            let e = std::io::Error::other("a Redis Cluster has no one master");
            return Err(Unlocated::Redis(e.into()));
        };
        let (host, port) = sentinel::master_addr(sentinels, &self.tls, timeout)
            .await
            .map_err(Unlocated::Sentinels)?;
        let url = sentinels.node_url(&host, port);
        node(host_port(&host, port), &url, &self.tls, true).map_err(Unlocated::Redis)
    }
}

/// `host:port` of a single node's URL, for logs: never the URL, which may hold a password.
fn single_addr(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("?");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host_port(host, url.port().unwrap_or(6379))
        }
        Err(_) => "<unparsable>".into(),
    }
}

fn node(addr: String, url: &str, tls: &TlsFiles, check_role: bool) -> redis::RedisResult<Node> {
    let client = super::client_for(url, tls)?;
    Ok(Node {
        addr,
        pubsub: io::resp3(&client)?,
        client,
        check_role,
    })
}

/// Whether `conn`'s node is a master now: `ROLE` answers `master` first. A node the
/// sentinels named may have been demoted since (or be a restarted old master that has not
/// been reconfigured yet): staying on it would read nothing published to the new master.
///
/// A user whose ACL refuses ROLE (NOPERM) cannot tell: the sentinels are trusted then.
pub async fn is_master(conn: &mut impl ConnectionLike, timeout: Duration) -> Result<(), String> {
    let role = redis::cmd("ROLE");
    let asked = role.query_async::<Value>(conn);
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(Value::Array(items))) => {
            let role = match items.first() {
                Some(Value::BulkString(role)) => String::from_utf8_lossy(role).into_owned(),
                Some(Value::SimpleString(role)) => role.clone(),
                other => format!("{other:?}"),
            };
            match role.as_str() {
                "master" => Ok(()),
                _ => Err(format!("the node answers ROLE {role}, not master")),
            }
        }
        Ok(Ok(other)) => Err(format!("unexpected ROLE reply {other:?}")),
        Ok(Err(e)) if e.code() == Some("NOPERM") => Ok(()),
        Ok(Err(e)) => Err(format!("ROLE failed: {e}")),
        Err(_) => Err(format!("ROLE: no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_is_logged_without_its_password() {
        assert_eq!(single_addr("redis://:hunter2@cache:6380/1"), "cache:6380");
        assert_eq!(single_addr("rediss://u:pw@[::1]/"), "[::1]:6379");
    }
}
