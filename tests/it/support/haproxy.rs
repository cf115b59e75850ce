//! HAProxy in front of three Herald instances, run from deploy/haproxy.cfg exactly as
//! shipped: the config reads its addresses from HAPROXY_BIND and HERALD1_ADDR..HERALD3_ADDR.
//!
//! Its output is kept line by line with the moment each arrived, so a test can wait for a
//! server state change ("Server herald/herald1 is DOWN") as an event and time it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{free_port, http};

/// The config under test, unchanged.
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");

/// Log lines printed when a test fails while HAProxy runs.
const LOG_TAIL: usize = 60;

pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    log: Arc<Log>,
}

/// What HAProxy printed (stdout: its traffic log; stderr: alerts and warnings, among them
/// server state changes), each line with the moment it was read.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Instant, String)>>,
    grew: Notify,
}

impl Haproxy {
    /// Starts `haproxy -db -f deploy/haproxy.cfg` with its addresses in the environment
    /// and waits until it routes: a GET /readyz through it reaches a ready instance.
    /// `backends` become HERALD1_ADDR..HERALD3_ADDR, i.e. servers herald1..herald3.
    pub async fn start(backends: [SocketAddr; 3]) -> Haproxy {
        // The free port may be taken between our probe and HAProxy's bind; an HAProxy that
        // exits at once is retried on another port.
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut command = Command::new(binary());
            command
                .args(["-db", "-f", CONFIG])
                .envs(env(addr, backends));
            let mut haproxy = Haproxy::spawn(command, addr);
            match haproxy.wait_routing(Duration::from_secs(10)).await {
                Ok(()) => return haproxy,
                Err(status) => eprintln!(
                    "haproxy on {addr} exited at start ({status}); its output:\n{}",
                    haproxy.log_text(LOG_TAIL)
                ),
            }
        }
        panic!("haproxy did not start on any of 5 free ports");
    }

    fn spawn(mut command: Command, addr: SocketAddr) -> Haproxy {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start haproxy: {e}"));
        let log = Arc::new(Log::default());
        keep_lines(child.stdout.take().expect("piped stdout"), log.clone());
        keep_lines(child.stderr.take().expect("piped stderr"), log.clone());
        Haproxy { child, addr, log }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL through HAProxy; `query` without the `?`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// Polls GET /readyz through HAProxy until a 200 (it forwarded to a ready instance);
    /// `Err` if HAProxy exited meanwhile (a port taken under us).
    async fn wait_routing(&mut self, timeout: Duration) -> Result<(), String> {
        let url = format!("http://{}/readyz", self.addr);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll haproxy") {
                return Err(status.to_string());
            }
            let seen = http::get(&url).await.map(|(status, _)| status);
            if seen == Ok(200) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy on {} did not route GET /readyz to a ready instance within {timeout:?}; \
                 last saw: {seen:?}; its output:\n{}",
                self.addr,
                self.log_text(LOG_TAIL)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether HAProxy last reported `server` (herald1..herald3) UP: servers start UP, and
    /// every health-check verdict that changes it is logged as "Server herald/NAME is UP"
    /// or "... is DOWN". Also returns the moment and the line of that last change.
    pub fn server_state(&self, server: &str) -> (bool, Option<(Instant, String)>) {
        let up = format!("Server herald/{server} is UP");
        let down = format!("Server herald/{server} is DOWN");
        let lines = self.log.lines.lock().unwrap();
        let last = lines
            .iter()
            .rev()
            .find(|(_, line)| line.contains(&up) || line.contains(&down));
        match last {
            None => (true, None),
            Some((at, line)) => (line.contains(&up), Some((*at, line.clone()))),
        }
    }

    /// Waits (on HAProxy's output, not by polling it) until `server` is `up` as HAProxy
    /// sees it; returns when and by which line it became so (`None`: it never changed).
    pub async fn wait_server(
        &self,
        server: &str,
        up: bool,
        timeout: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let grew = self.log.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            let (now_up, change) = self.server_state(server);
            if now_up == up {
                return change;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                panic!(
                    "haproxy did not mark {server} {} within {timeout:?}; last change: {change:?}; \
                     its output:\n{}",
                    if up { "UP" } else { "DOWN" },
                    self.log_text(LOG_TAIL)
                );
            }
        }
    }

    /// Waits (on HAProxy's output) for the traffic log line of the connection from
    /// `client`. In HTTP mode a tunnelled WebSocket is logged once, when it ends. HAProxy's
    /// stdout log is non-blocking and drops lines when the pipe is full, so wait for lines
    /// one connection at a time, not for a burst.
    pub async fn wait_log_from(
        &self,
        client: SocketAddr,
        since: usize,
        timeout: Duration,
    ) -> HttpLog {
        let client = client.to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let grew = self.log.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            let found = {
                let lines = self.log.lines.lock().unwrap();
                lines
                    .iter()
                    .skip(since)
                    .filter_map(|(_, line)| HttpLog::parse(line))
                    .find(|l| l.client == client)
            };
            if let Some(line) = found {
                return line;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                panic!(
                    "haproxy logged no connection from {client} within {timeout:?}; its \
                     output:\n{}",
                    self.log_text(LOG_TAIL)
                );
            }
        }
    }

    /// How many lines HAProxy has written so far: pass it to `wait_log_from` to skip them.
    pub fn log_len(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    /// The last `n` lines of output.
    pub fn log_text(&self, n: usize) -> String {
        let lines = self.log.lines.lock().unwrap();
        let tail = &lines[lines.len().saturating_sub(n)..];
        let tail: Vec<&str> = tail.iter().map(|(_, line)| line.as_str()).collect();
        tail.join("\n")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- haproxy output (last {LOG_TAIL} lines) ----\n{}\n---- end of haproxy output ----",
                self.log_text(LOG_TAIL)
            );
        }
    }
}

/// One line of HAProxy's HTTP log (`option httplog`):
/// `client [date] frontend backend/server Tq/Tw/Tc/Tr/Tt status bytes - - term
///  actconn/feconn/beconn/srv_conn/retries queues "request"`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLog {
    /// The client's address and port.
    pub client: String,
    /// `herald1`..`herald3`, or `<NOSRV>`.
    pub server: String,
    pub status: u16,
    /// How many times the connection to a server was retried; a leading `+` means the
    /// last retry was redispatched to another server (e.g. after a draining 503).
    pub retries: String,
    pub request: String,
}

impl HttpLog {
    pub fn parse(line: &str) -> Option<HttpLog> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (_, server) = fields.get(3)?.split_once('/')?;
        let status = fields.get(5)?.parse().ok()?;
        let retries = fields.get(10)?.rsplit('/').next()?.to_owned();
        let request = line.split_once('"')?.1.trim_end_matches('"').to_owned();
        Some(HttpLog {
            client: fields.first()?.to_string(),
            server: server.to_owned(),
            status,
            retries,
            request,
        })
    }

    /// Sent first to an instance that refused it, then to another.
    pub fn redispatched(&self) -> bool {
        self.retries.starts_with('+')
    }
}

/// The variables deploy/haproxy.cfg reads.
pub fn env(bind: SocketAddr, backends: [SocketAddr; 3]) -> Vec<(String, String)> {
    let mut vars = vec![("HAPROXY_BIND".to_owned(), bind.to_string())];
    for (i, backend) in backends.iter().enumerate() {
        vars.push((format!("HERALD{}_ADDR", i + 1), backend.to_string()));
    }
    vars
}

/// `haproxy -c -f <config>`: checks the configuration and exits.
pub fn check_config(config: &Path, env: &[(String, String)]) -> Output {
    Command::new(binary())
        .arg("-c")
        .arg("-f")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run haproxy -c: {e}"))
}

/// HAProxy's path. Debian installs it in /usr/sbin, which a non-root PATH may lack. A
/// missing binary fails the test (never skips it) with the install command.
fn binary() -> PathBuf {
    let name = "haproxy";
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "haproxy is not installed (not on PATH, nor in /usr/sbin); this test runs the real one: \
         apt-get install haproxy"
    )
}

/// A thread (not a task: it must keep draining the pipe whatever the runtime does) that
/// keeps every line and wakes waiters.
fn keep_lines(pipe: impl Read + Send + 'static, log: Arc<Log>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            log.lines.lock().unwrap().push((Instant::now(), line));
            log.grew.notify_waiters();
        }
    });
}
