//! A real 6-node Redis Cluster (3 masters, 1 replica each) on free loopback ports, that
//! can lose a master to SIGKILL and move a slot while publications flow.
//!
//! Everything here asks the nodes themselves (CLUSTER KEYSLOT, CLUSTER NODES, MOVED), never
//! Herald's topology module, so the tests can hold one against the other.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{free_port, TempDir};

/// How long a node may be unreachable before it is failing. Small for quick failovers
/// (measured on Redis 7.0.15: a replica is promoted ~1.5 s after this), not so small that
/// a node starved on a loaded 2-core machine gets failed over by mistake.
const NODE_TIMEOUT_MS: u64 = 3000;

/// One redis-server with cluster support on.
pub struct Node {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
    _dir: TempDir,
}

impl Node {
    /// A cluster-enabled node that joined no cluster and owns no slot.
    pub async fn lone() -> Node {
        start_node().await
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Cluster {
    nodes: Vec<Node>,
    /// The tests' own command connections, by port.
    conns: Mutex<HashMap<u16, MultiplexedConnection>>,
}

impl Cluster {
    /// Starts 6 nodes, joins them with `redis-cli --cluster create --cluster-replicas 1`,
    /// and waits until every node reports `cluster_state:ok`, all agree on the slot map
    /// and every replica's link to its master is up (so a failover can promote it).
    pub async fn start() -> Cluster {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            conns: Mutex::new(HashMap::new()),
        };
        while cluster.nodes.len() < 6 {
            let node = start_node().await;
            cluster.nodes.push(node);
        }
        let addrs: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (apt-get install redis-tools): {e}"));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster
            .wait_settled(Duration::from_secs(30), |_| true)
            .await;
        cluster
    }

    /// Ports of the nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...` over the running nodes.
    pub fn seeds(&self) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `CLUSTER KEYSLOT`, asked of a node.
    pub async fn keyslot(&self, name: &str) -> u16 {
        let port = self.ports()[0];
        self.query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(name))
            .await
    }

    /// Master port -> node id, as the first running node sees it.
    pub async fn masters(&self) -> BTreeMap<u16, String> {
        let view = self.view(self.ports()[0]).await;
        view.masters
            .iter()
            .map(|m| (m.port, m.id.clone()))
            .collect()
    }

    /// The port of the master owning `name`'s slot.
    pub async fn master_of(&self, name: &str) -> u16 {
        let slot = self.keyslot(name).await;
        self.master_of_slot(slot).await
    }

    pub async fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.view(self.ports()[0]).await;
        view.masters
            .iter()
            .find(|m| m.slots.iter().any(|r| r.contains(&slot)))
            .unwrap_or_else(|| panic!("no master owns slot {slot}: {view:?}"))
            .port
    }

    /// SPUBLISH through any node, following MOVED; returns how many received it.
    pub async fn spublish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(channel).arg(payload.as_ref());
        self.routed(&cmd).await
    }

    /// `FCALL function 1 key args...` through any node, following MOVED.
    pub async fn fcall<T: redis::FromRedisValue>(
        &self,
        function: &str,
        key: &str,
        args: &[&str],
    ) -> T {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(1).arg(key).arg(args);
        self.routed(&cmd).await
    }

    /// `FUNCTION LOAD REPLACE` on every master: Redis Cluster does not spread functions
    /// itself (replicas get them by replication).
    pub async fn function_load(&self, library: &str) {
        for port in self.masters().await.into_keys() {
            let _: String = self
                .query(
                    port,
                    redis::cmd("FUNCTION")
                        .arg("LOAD")
                        .arg("REPLACE")
                        .arg(library),
                )
                .await;
        }
    }

    /// A command sent to the first running node and then where MOVED says (ASK too: a
    /// migrating slot's keys may already be on the target).
    pub async fn routed<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut port = self.ports()[0];
        let mut asking = false;
        for _ in 0..5 {
            let mut conn = self.conn(port).await;
            let reply = if asking {
                let mut pipe = redis::pipe();
                pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                pipe.query_async::<(T,)>(&mut conn).await.map(|(t,)| t)
            } else {
                cmd.query_async(&mut conn).await
            };
            match reply {
                Ok(value) => return value,
                Err(e) => match e.redirect_node() {
                    Some((addr, _slot)) => {
                        asking = e.code() == Some("ASK");
                        port = addr
                            .rsplit_once(':')
                            .and_then(|(_, p)| p.parse().ok())
                            .unwrap_or_else(|| panic!("redirect to {addr:?}"));
                    }
                    None => panic!("{cmd:?} on port {port} failed: {e}"),
                },
            }
        }
        panic!("{cmd:?}: redirected 5 times");
    }

    /// SIGKILLs the master owning `name`'s slot; returns its port.
    pub async fn kill9_master_of(&mut self, name: &str) -> u16 {
        let port = self.master_of(name).await;
        self.conns.lock().unwrap().remove(&port);
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node");
        let mut child = node.child.take().expect("a running master");
        child.kill().expect("SIGKILL redis-server");
        child.wait().expect("wait for redis-server");
        port
    }

    /// Waits until a replica took over every slot of the killed masters: every running
    /// node says `cluster_state:ok` and agrees on a slot map with 3 running masters.
    /// Returns how long it took.
    pub async fn wait_failover(&self) -> Duration {
        let started = Instant::now();
        let running = self.ports();
        self.wait_settled(Duration::from_secs(60), |view| {
            view.masters.iter().all(|m| running.contains(&m.port))
        })
        .await;
        started.elapsed()
    }

    /// Adds an empty master (CLUSTER MEET); returns its port once every node knows it.
    pub async fn add_master(&mut self) -> u16 {
        let node = start_node().await;
        let port = node.port;
        let first = self.ports()[0];
        let _: () = self
            .query(
                first,
                redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(port),
            )
            .await;
        self.nodes.push(node);
        self.wait_settled(Duration::from_secs(30), |_| true).await;
        port
    }

    /// Moves `slot` to the master on `to`, the way `redis-cli --cluster reshard` does:
    /// IMPORTING on the target, MIGRATING on the source, MIGRATE every key in the slot,
    /// then SETSLOT NODE on target, source and the other masters. Publications may flow
    /// meanwhile. Returns once every node agrees.
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.master_of_slot(slot).await;
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let masters = self.masters().await;
        // `to` may own no slot yet (a node just added): ask it for its id.
        let to_id: String = self.query(to, redis::cmd("CLUSTER").arg("MYID")).await;
        let (from_id, to_id) = (&masters[&from], &to_id);
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let _: () = self.query(to, &setslot("IMPORTING", from_id)).await;
        let _: () = self.query(from, &setslot("MIGRATING", to_id)).await;
        loop {
            let keys: Vec<String> = self
                .query(
                    from,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(100),
                )
                .await;
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys);
            let _: () = self.query(from, &migrate).await;
        }
        // Target first: once the source lets go, MOVED must already find an owner.
        let _: () = self.query(to, &setslot("NODE", to_id)).await;
        let _: () = self.query(from, &setslot("NODE", to_id)).await;
        for &other in masters.keys().filter(|&&p| p != from && p != to) {
            let _: () = self.query(other, &setslot("NODE", to_id)).await;
        }
        self.wait_settled(Duration::from_secs(30), |view| {
            view.masters
                .iter()
                .any(|m| m.port == to && m.slots.iter().any(|r| r.contains(&slot)))
        })
        .await;
    }

    /// `PUBSUB SHARDCHANNELS` on each running master, sorted.
    pub async fn pubsub_shardchannels(&self) -> BTreeMap<u16, Vec<String>> {
        let mut carried = BTreeMap::new();
        for port in self.masters().await.into_keys() {
            let mut channels: Vec<String> = self
                .query(port, redis::cmd("PUBSUB").arg("SHARDCHANNELS"))
                .await;
            channels.sort();
            carried.insert(port, channels);
        }
        carried
    }

    /// Any command on one node.
    pub async fn query<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> T {
        let mut conn = self.conn(port).await;
        match cmd.query_async(&mut conn).await {
            Ok(value) => value,
            Err(e) => {
                self.conns.lock().unwrap().remove(&port);
                panic!("{cmd:?} on port {port} failed: {e}");
            }
        }
    }

    async fn conn(&self, port: u16) -> MultiplexedConnection {
        if let Some(conn) = self.conns.lock().unwrap().get(&port) {
            return conn.clone();
        }
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to node on port {port}: {e}"));
        self.conns.lock().unwrap().insert(port, conn.clone());
        conn
    }

    /// Polls every running node until all say `cluster_state:ok`, hold the same slot map
    /// covering all 16384 slots with 3 masters, have every replica's link up, and `done`
    /// holds for that map. Panics with the last views when time runs out.
    async fn wait_settled(&self, timeout: Duration, done: impl Fn(&View) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            last.clear();
            for port in self.ports() {
                last.push((port, self.try_view(port).await));
            }
            let views: Vec<&View> = last.iter().filter_map(|(_, v)| v.as_ref().ok()).collect();
            let settled = views.len() == last.len()
                && views.iter().all(|v| v.ok && v.link_up && v.covered())
                && views.windows(2).all(|w| w[0].nodes == w[1].nodes)
                && views[0].masters.len() >= 3
                && done(views[0]);
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle within {timeout:?}; last seen: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn view(&self, port: u16) -> View {
        self.try_view(port)
            .await
            .unwrap_or_else(|e| panic!("node on port {port}: {e}"))
    }

    async fn try_view(&self, port: u16) -> Result<View, String> {
        let mut conn = self.conn(port).await;
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER")
            .arg("INFO")
            .cmd("CLUSTER")
            .arg("NODES")
            .cmd("INFO")
            .arg("replication");
        let (info, nodes, replication): (String, String, String) =
            pipe.query_async(&mut conn).await.map_err(|e| {
                self.conns.lock().unwrap().remove(&port);
                e.to_string()
            })?;
        let is_replica = replication.contains("role:slave");
        Ok(View {
            ok: info.contains("cluster_state:ok"),
            link_up: !is_replica || replication.contains("master_link_status:up"),
            masters: masters_in(&nodes),
            nodes: nodes_in(&nodes),
        })
    }
}

/// One node's idea of the cluster.
#[derive(Debug)]
struct View {
    ok: bool,
    /// A replica's link to its master is up (always true on a master).
    link_up: bool,
    /// Masters owning slots, sorted by port.
    masters: Vec<MasterView>,
    /// Every node's id, flags and master, sorted: equal slot maps were not enough, a
    /// master could still be missing its replica (CLUSTER REPLICAS empty) until gossip
    /// spread the replica's CLUSTER REPLICATE.
    nodes: Vec<String>,
}

impl View {
    fn covered(&self) -> bool {
        let owned: usize = self
            .masters
            .iter()
            .flat_map(|m| &m.slots)
            .map(|r| usize::from(r.end() - r.start()) + 1)
            .sum();
        owned == 16384
    }
}

#[derive(Debug, PartialEq, Eq)]
struct MasterView {
    id: String,
    port: u16,
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

/// Masters with slots from `CLUSTER NODES` lines:
/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`; slots
/// are `n` or `a-b`, and `[n->-id]`/`[n-<-id]` mark a migration in progress (skipped).
fn masters_in(nodes: &str) -> Vec<MasterView> {
    let mut masters: Vec<MasterView> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                return None;
            }
            let port = fields[1].split(['@', ',']).next()?.rsplit_once(':')?.1;
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => a.parse().unwrap()..=b.parse().unwrap(),
                    None => s.parse().unwrap()..=s.parse().unwrap(),
                })
                .collect();
            Some(MasterView {
                id: fields[0].to_string(),
                port: port.parse().ok()?,
                slots,
            })
        })
        .collect();
    masters.sort_by_key(|m| m.port);
    masters
}

/// `<id> <flags> <master>` of each `CLUSTER NODES` line, without the asking node's
/// `myself` flag, sorted.
fn nodes_in(nodes: &str) -> Vec<String> {
    let mut lines: Vec<String> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags: Vec<&str> = fields
                .get(2)?
                .split(',')
                .filter(|f| *f != "myself")
                .collect();
            Some(format!(
                "{} {} {}",
                fields[0],
                flags.join(","),
                fields.get(3)?
            ))
        })
        .collect();
    lines.sort();
    lines
}

/// One cluster node on a free port, answering PING. A port taken between our probe and
/// redis's bind makes redis-server exit at once: that node is retried on another port.
async fn start_node() -> Node {
    for _ in 0..5 {
        let port = free_port();
        let dir = TempDir::new(&format!("cluster-{port}"));
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica's first sync waited out the default 5 s delay (diskless sync
            // gathering more replicas), which was most of the startup.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir.path());
        let child = super::redis::start(command, "redis-server --cluster-enabled yes");
        let mut node = Node {
            port,
            child: Some(child),
            _dir: dir,
        };
        if wait_up(&mut node).await {
            return node;
        }
    }
    panic!("a cluster node did not start on any of 5 free ports");
}

async fn wait_up(node: &mut Node) -> bool {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", node.port)).expect("url");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let child = node.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().expect("poll redis-server") {
            eprintln!("cluster node on port {} exited: {status}", node.port);
            node.child = None;
            return false;
        }
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            if pong.is_ok() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
