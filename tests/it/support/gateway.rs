//! The real `herald` binary, spawned per test on 127.0.0.1:0. Its JSON log lines are kept
//! so a failing test prints what the gateway said.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::eventually::{eventually, expect_eq};
use super::http;
use super::metrics::Scrape;

/// Log lines printed when a test fails while the gateway runs.
const LOG_TAIL: usize = 200;

pub struct Gateway {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Spawns herald against `redis_url` with `extra` flags and waits for its "listening"
    /// log line. Does not wait for Redis: see `wait_ready`.
    pub async fn start(redis_url: &str, extra: &[&str]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0", "--redis-url", redis_url])
            .args(["--log-format", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the herald binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        // A thread, not a task: it must keep draining stderr (so herald never blocks on a
        // full pipe) whatever the test's runtime is doing.
        std::thread::spawn({
            let logs = logs.clone();
            move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = listening_addr(&line) {
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(20), addr_rx).await {
            Ok(Ok(addr)) => addr,
            outcome => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "herald did not log \"listening\" ({}; exit: {status:?}); its log:\n{}",
                    if outcome.is_err() {
                        "timed out after 20s"
                    } else {
                        "stderr closed"
                    },
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Gateway { child, addr, logs }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The WebSocket URL; `query` without the `?`, e.g. `channels=a,b`, or empty.
    pub fn ws_url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://{}/ws", self.addr)
        } else {
            format!("ws://{}/ws?{query}", self.addr)
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`; panics (with the gateway's log) if the request fails at transport level.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
    }

    pub async fn try_get(&self, path: &str) -> Result<(u16, String), String> {
        http::get(&self.http_url(path)).await
    }

    /// Scrapes and parses /metrics.
    pub async fn metrics(&self) -> Scrape {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        Scrape::parse(&body)
    }

    /// Waits until /readyz answers 200 (the Redis subscriber connection is up).
    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_readyz(200, timeout).await;
    }

    /// Waits until /readyz answers `status`.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) {
        let what = format!("/readyz to answer {status}");
        eventually(&what, timeout, async || {
            let seen = self.try_get("/readyz").await.map(|(s, _)| s);
            expect_eq(seen, &Ok(status)).map(drop)
        })
        .await;
    }

    /// Waits until the scraped value of `name` (no labels) is `expected`.
    pub async fn wait_metric(&self, name: &str, expected: f64, timeout: Duration) {
        let what = format!("{name} == {expected}");
        eventually(&what, timeout, async || {
            expect_eq(self.metrics().await.try_value(name, &[]), &Some(expected))
        })
        .await;
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// SIGKILL: no drain, no goodbye to Redis or clients, like a crashed host; waits for
    /// the exit. The handle stays usable for `logs`.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL herald");
        let status = self.child.wait().expect("wait for herald");
        assert!(
            status.code().is_none(),
            "herald exited on its own ({status}) before the SIGKILL"
        );
    }

    /// Waits for the process to exit. std offers no async wait on a child, so this polls.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll herald") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herald did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Resident memory of the gateway process, in bytes (VmRSS from /proc).
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid()).expect("VmRSS of the gateway in /proc/<pid>/status")
    }
}

/// Resident memory of process `pid`, in bytes (VmRSS from /proc); `None` once it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap();
            let tail = &logs[logs.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "---- herald log ({} lines, last {}) ----\n{}\n---- end of herald log ----",
                logs.len(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// The bound address from the `{"fields":{"message":"listening","addr":...}}` line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}
