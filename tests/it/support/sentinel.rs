//! A Redis Sentinel deployment per test, on free loopback ports: a master, one replica and
//! three sentinels (quorum 2) that fail over within a few seconds of the master's death
//! (`down-after-milliseconds` 1000). Sentinels are `redis-server <conf> --sentinel`, the
//! same binary Debian's redis-sentinel is. Everything is killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use tokio::time::Instant;

use super::eventually::eventually;
use super::redis::{connect, start};
use super::{free_port, secs, Redis, TempDir};

/// The name the sentinels monitor the master under.
pub const MASTER: &str = "mymaster";

pub struct Sentinels {
    /// Started as the master; after a failover the sentinels may name `replica` instead.
    pub master: Redis,
    pub replica: Redis,
    sentinels: Vec<Sentinel>,
}

struct Sentinel {
    port: u16,
    child: Child,
    /// Holds its config file (Sentinel rewrites it) and log.
    dir: TempDir,
}

impl Sentinels {
    /// Starts the master, a replica of it (in sync before any sentinel starts, so that the
    /// sentinels' first INFO already lists it), and three sentinels; returns once every
    /// sentinel names the master, sees the replica up and knows the two other sentinels
    /// (a failover needs their votes).
    pub async fn start() -> Sentinels {
        let master = Redis::start().await;
        let master_port = master.port().to_string();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &master_port]).await;
        eventually(
            "the replica in sync with the master",
            secs(10),
            async || {
                let info = info(replica.port(), "replication").await?;
                match info.contains("master_link_status:up") {
                    true => Ok(()),
                    false => Err(info),
                }
            },
        )
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(Sentinel::start(master.port()).await);
        }
        let set = Sentinels {
            master,
            replica,
            sentinels,
        };
        for sentinel in &set.sentinels {
            eventually(
                "a sentinel that names the master, sees the replica and knows 2 others",
                secs(20),
                async || sentinel.settled(set.master.port()).await,
            )
            .await;
        }
        set
    }

    /// `redis+sentinel://` with every sentinel, for `master` (usually `MASTER`).
    pub fn url_for(&self, master: &str) -> String {
        format!("redis+sentinel://{}/{master}", self.hosts())
    }

    pub fn url(&self) -> String {
        self.url_for(MASTER)
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn hosts(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        hosts.join(",")
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// Waits until every sentinel names a master other than `old_port` and that node
    /// answers ROLE as a master; returns its port. The promoted node closed its clients
    /// (the sentinel's `CLIENT KILL TYPE normal` beside `REPLICAOF NO ONE`), the fixture's
    /// own connection too: it is forgotten.
    pub async fn wait_promoted(&self, old_port: u16, timeout: Duration) -> u16 {
        let promoted = eventually("the sentinels to name a new master", timeout, async || {
            let mut named = Vec::new();
            for port in self.sentinel_ports() {
                named.push(master_named(port).await.map_err(|e| e.to_string())?);
            }
            let first = named[0];
            if first == old_port || named.iter().any(|p| *p != first) {
                return Err(format!("named: {named:?}"));
            }
            let role = role(first).await.map_err(|e| e.to_string())?;
            match role.as_str() {
                "master" => Ok(first),
                other => Err(format!("{first} answers ROLE {other}")),
            }
        })
        .await;
        self.node(promoted).forget_connection();
        promoted
    }

    /// `SENTINEL FAILOVER`: promotes the replica while the old master stays up (the
    /// sentinels turn it into a replica some seconds later).
    pub async fn failover(&self) {
        let ok: String = sentinel_query(self.sentinels[0].port, &["FAILOVER", MASTER])
            .await
            .expect("SENTINEL FAILOVER");
        assert_eq!(ok, "OK");
    }

    /// The fixture for the node on `port` (the master or the replica).
    pub fn node(&self, port: u16) -> &Redis {
        if self.master.port() == port {
            &self.master
        } else {
            assert_eq!(self.replica.port(), port, "not a node of this deployment");
            &self.replica
        }
    }
}

impl Sentinel {
    async fn start(master_port: u16) -> Sentinel {
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new(&format!("sentinel-{port}"));
            let conf = dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                dir = dir.path().display(),
                log = log_path(dir.path()).display(),
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let mut sentinel = Sentinel {
                port,
                child: spawn(&conf),
                dir,
            };
            // A sentinel whose port a parallel test took exits at once: retry elsewhere.
            if sentinel.wait_up(secs(10)).await {
                return sentinel;
            }
        }
        panic!("redis-server --sentinel did not start on any of 5 free ports");
    }

    /// True once it answers `SENTINEL MYID`; false if it exited or time ran out.
    async fn wait_up(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll redis-server --sentinel") {
                eprintln!("sentinel on port {} exited: {status}", self.port);
                return false;
            }
            if sentinel_query::<String>(self.port, &["MYID"]).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Ok once this sentinel names the master on `master_port`, lists the replica without
    /// a down flag and knows two other sentinels.
    async fn settled(&self, master_port: u16) -> Result<(), String> {
        let named = master_named(self.port).await.map_err(|e| e.to_string())?;
        if named != master_port {
            return Err(format!("names master {named}"));
        }
        let replicas: Vec<Vec<String>> = sentinel_query(self.port, &["REPLICAS", MASTER])
            .await
            .map_err(|e| e.to_string())?;
        let up = replicas.iter().any(|fields| {
            let flags = field(fields, "flags");
            flags == Some("slave")
        });
        let others: Vec<Vec<String>> = sentinel_query(self.port, &["SENTINELS", MASTER])
            .await
            .map_err(|e| e.to_string())?;
        if !up || others.len() < 2 {
            let log = std::fs::read_to_string(log_path(self.dir.path())).unwrap_or_default();
            return Err(format!(
                "replicas {replicas:?}, {} other sentinels; log tail: {}",
                others.len(),
                &log[log.len().saturating_sub(600)..]
            ));
        }
        Ok(())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_path(dir: &std::path::Path) -> PathBuf {
    dir.join("sentinel.log")
}

fn spawn(conf: &std::path::Path) -> Child {
    let mut command = Command::new("redis-server");
    command.arg(conf).arg("--sentinel");
    start(command, "redis-server --sentinel")
}

/// A field of a SENTINEL REPLICAS / SENTINELS entry (a flat name, value list).
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair.get(1))
        .map(String::as_str)
}

async fn sentinel_query<T: redis::FromRedisValue>(
    port: u16,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut conn = connect(port).await?;
    let mut cmd = redis::cmd("SENTINEL");
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await
}

/// The master's port as the sentinel on `port` names it.
pub async fn master_named(port: u16) -> redis::RedisResult<u16> {
    let (_, master): (String, u16) =
        sentinel_query(port, &["GET-MASTER-ADDR-BY-NAME", MASTER]).await?;
    Ok(master)
}

/// The master's port as the first sentinel that answers names it, trying each in turn.
pub async fn ask_master(sentinel_ports: &[u16]) -> Option<u16> {
    for port in sentinel_ports {
        if let Ok(master) = master_named(*port).await {
            return Some(master);
        }
    }
    None
}

/// `ROLE`'s first field on the node at `port`.
pub async fn role(port: u16) -> redis::RedisResult<String> {
    let mut conn = connect(port).await?;
    let reply: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
    match reply.first() {
        Some(redis::Value::BulkString(role)) => Ok(String::from_utf8_lossy(role).into_owned()),
        other => Ok(format!("{other:?}")),
    }
}

async fn info(port: u16, section: &str) -> Result<String, String> {
    let mut conn = connect(port).await.map_err(|e| e.to_string())?;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())
}
