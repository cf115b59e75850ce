//! Fixtures that start real things: redis-server (alone, or a master, a replica and three
//! sentinels), the `herald` binary, WebSocket clients, a freezable TCP proxy; and the
//! helpers to wait on them with bounded timeouts.

// Each test uses a different subset of the fixtures.
#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod eventually;
pub mod gateway;
pub mod haproxy;
pub mod http;
pub mod metrics;
pub mod prometheus;
pub mod proxy;
pub mod redis;
pub mod sentinel;

use std::net::TcpListener;
use std::time::Duration;

pub use client::Client;
pub use eventually::eventually;
pub use gateway::Gateway;
pub use proxy::Proxy;
pub use redis::Redis;
pub use sentinel::Sentinels;

/// Short hand for the many timeouts in the tests.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A port that was free a moment ago: bind port 0 and let the listener go.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The usual start: a fresh Redis and a gateway on it that is ready (subscriber connected).
pub async fn start(extra_args: &[&str]) -> (Redis, Gateway) {
    let redis = Redis::start().await;
    let gateway = Gateway::start(&redis.url(), extra_args).await;
    gateway.wait_ready(secs(10)).await;
    (redis, gateway)
}

/// A fresh directory, removed with everything in it when dropped (also when the test
/// fails): `herald-it-<what>-<nanos>` under `base`.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Under the system's temporary directory.
    pub fn new(what: &str) -> TempDir {
        TempDir::under(&std::env::temp_dir(), what)
    }

    pub fn under(base: &std::path::Path, what: &str) -> TempDir {
        let nanos = std::time::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .as_nanos();
        let dir = base.join(format!("herald-it-{what}-{nanos}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
