//! A real redis-server per test, on a free port, that can be killed and restarted on the
//! same port (to test Herald's reconnect against a Redis that truly went away).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{free_port, secs};

pub struct Redis {
    port: u16,
    dir: PathBuf,
    /// Arguments added to every start and restart, e.g. persistence settings.
    extra: Vec<String>,
    child: Option<Child>,
    client: redis::Client,
    /// The test's own (non-pub/sub) connection, opened on first use and after a restart.
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Redis {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub async fn start() -> Redis {
        Redis::start_with(&[]).await
    }

    /// Like `start`, with `extra` redis-server arguments that `restart` passes again (they
    /// come after the defaults, so they win: `["--appendonly", "yes"]` turns AOF on, and
    /// its files stay in the data directory across `kill9` and `restart`).
    pub async fn start_with(extra: &[&str]) -> Redis {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        // The free port may be taken by a parallel test between our probe and redis's bind;
        // a redis-server that exits at once is retried on another port.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("herald-it-redis-{port}-{}", nanos()));
            std::fs::create_dir_all(&dir).expect("create redis temp dir");
            let mut redis = Redis {
                port,
                client: redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .expect("redis url"),
                child: Some(spawn(port, &dir, &extra)),
                dir,
                extra: extra.clone(),
                conn: Mutex::new(None),
            };
            if redis.wait_up(Duration::from_secs(10)).await {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: no goodbye to any client, like a crashed host; waits for the exit.
    pub fn kill9(&mut self) {
        *self.conn.lock().unwrap() = None;
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL redis-server");
            child.wait().expect("wait for redis-server");
        }
    }

    /// Starts redis-server again on the same port and data directory, with the same
    /// arguments, and waits for PING: empty unless started with persistence (`start_with`).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a killed redis");
        self.child = Some(spawn(self.port, &self.dir, &self.extra));
        assert!(
            self.wait_up(Duration::from_secs(10)).await,
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Drops the test's own connection (the next command opens another): for a node that
    /// closed its clients on purpose, as Sentinel has a replica do when it promotes it.
    pub fn forget_connection(&self) {
        *self.conn.lock().unwrap() = None;
    }

    /// PUBLISH; returns how many subscribers Redis delivered to.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload.as_ref());
        self.query(&cmd).await
    }

    /// PUBSUB CHANNELS, sorted, without Herald's own control channel (`<prefix>herald#control`,
    /// always subscribed: `channel::Prefix::control`) and the sentinels' `__sentinel__:hello`:
    /// the channels clients made Herald hold.
    pub async fn pubsub_channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = self.query(redis::cmd("PUBSUB").arg("CHANNELS")).await;
        channels.retain(|c| !c.ends_with("herald#control") && c != "__sentinel__:hello");
        channels.sort();
        channels
    }

    /// Whether Herald's control channel (with `prefix`) is subscribed by some instance.
    pub async fn control_subscribed(&self, prefix: &str) -> bool {
        let channels: Vec<String> = self.query(redis::cmd("PUBSUB").arg("CHANNELS")).await;
        channels.contains(&format!("{prefix}herald#control"))
    }

    /// CLIENT KILL TYPE pubsub; returns how many connections Redis closed.
    pub async fn client_kill_pubsub(&self) -> i64 {
        self.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
            .await
    }

    /// `FCALL herald_publish 1 <channel> <payload>`: a publication kept in history; returns
    /// its offset (nil, so `None`, on a channel without history).
    pub async fn herald_publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> Option<String> {
        self.try_herald_publish(channel, payload)
            .await
            .unwrap_or_else(|e| panic!("FCALL herald_publish on {channel:?} failed: {e}"))
    }

    /// `herald_publish` that returns the error (e.g. the function is not loaded yet).
    pub async fn try_herald_publish(
        &self,
        channel: &str,
        payload: impl AsRef<[u8]>,
    ) -> redis::RedisResult<Option<String>> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("herald_publish")
            .arg(1)
            .arg(channel)
            .arg(payload.as_ref());
        let mut conn = self.conn().await;
        let reply = cmd.query_async(&mut conn).await;
        if reply.as_ref().is_err_and(|e| e.is_unrecoverable_error()) {
            *self.conn.lock().unwrap() = None;
        }
        reply
    }

    /// Many `herald_publish` in one pipeline, in order; returns their offsets.
    pub async fn herald_publish_many(&self, channel: &str, payloads: &[String]) -> Vec<String> {
        let mut pipe = redis::pipe();
        for payload in payloads {
            pipe.cmd("FCALL")
                .arg("herald_publish")
                .arg(1)
                .arg(channel)
                .arg(payload);
        }
        let mut conn = self.conn().await;
        match pipe.query_async(&mut conn).await {
            Ok(offsets) => offsets,
            Err(e) => {
                *self.conn.lock().unwrap() = None;
                panic!(
                    "{} x FCALL herald_publish on {channel:?} failed: {e}",
                    payloads.len()
                );
            }
        }
    }

    /// Any command, e.g. `raw(&["CLIENT", "LIST"])`.
    pub async fn raw(&self, args: &[&str]) -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        self.query(&cmd).await
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.conn().await;
        match cmd.query_async(&mut conn).await {
            Ok(value) => value,
            Err(e) => {
                *self.conn.lock().unwrap() = None;
                panic!("redis command {cmd:?} failed: {e}");
            }
        }
    }

    async fn conn(&self) -> MultiplexedConnection {
        if let Some(conn) = self.conn.lock().unwrap().clone() {
            return conn;
        }
        let conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to redis on port {}: {e}", self.port));
        *self.conn.lock().unwrap() = Some(conn.clone());
        conn
    }

    /// True once the server answers PING; false if the process exited or time ran out.
    async fn wait_up(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.child.as_mut().expect("a running redis");
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                eprintln!("redis-server on port {} exited: {status}", self.port);
                self.child = None;
                return false;
            }
            if let Ok(mut conn) = self.client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    *self.conn.lock().unwrap() = Some(conn);
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra);
    start(command, "redis-server")
}

/// Starts `command` (a `redis-server`, `what` in the messages) with its log on the test's
/// stderr; a missing binary is named with the package that has it.
pub fn start(mut command: Command, what: &str) -> Child {
    let spawned = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server is not installed (not found on PATH); these tests need a real Redis \
             ({what}): apt-get install redis-server"
        ),
        Err(e) => panic!("cannot start {what}: {e}"),
    }
}

/// A connection to the node on `port` that gives up after a second, connecting or
/// waiting for a reply: for tests that poll nodes which may be down.
pub async fn connect(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(secs(1)))
        .set_response_timeout(Some(secs(1)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}
