//! A real Prometheus running deploy/prometheus.yml, as deploy/README.md describes for local
//! runs: the config and its rules file copied into a temp dir, targets/herald.json written
//! there with the instances' addresses, data in the same dir, the API on a free port.
//! Also `promtool`, which Debian's prometheus package ships beside it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{free_port, http};

/// The deploy/ directory the configs come from.
pub const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

const INSTALL_HINT: &str = "apt-get install prometheus (Debian's package ships promtool too)";

/// Log lines printed when a test fails while Prometheus runs.
const LOG_TAIL: usize = 40;

pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` with deploy/prometheus.yml and waits until its
    /// /-/ready answers 200. The first scrape follows within one scrape interval (5s).
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        // The free port may be taken between our probe and Prometheus's bind; one that
        // exits at start is retried on another port.
        for _ in 0..5 {
            let port = free_port();
            let dir = temp_dir(&format!("prometheus-{port}"));
            let config = write_config_dir(&dir, targets);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let spawned = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "prometheus is not installed (not found on PATH); this test runs the real \
                     one: {INSTALL_HINT}"
                ),
                Err(e) => panic!("cannot start prometheus: {e}"),
            };
            let logs = Arc::new(Mutex::new(Vec::new()));
            let stderr = child.stderr.take().expect("piped stderr");
            // A thread, not a task: it must keep draining the pipe whatever the runtime does.
            std::thread::spawn({
                let logs = logs.clone();
                move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        logs.lock().unwrap().push(line);
                    }
                }
            });
            let mut prometheus = Prometheus {
                child,
                addr,
                dir,
                logs,
            };
            match prometheus.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return prometheus,
                Err(status) => eprintln!(
                    "prometheus on {addr} exited at start ({status}); its log:\n{}",
                    prometheus.log_tail()
                ),
            }
        }
        panic!("prometheus did not start on any of 5 free ports");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Polls /-/ready until 200; `Err` if the process exited meanwhile.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let url = format!("http://{}/-/ready", self.addr);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll prometheus") {
                return Err(status.to_string());
            }
            let seen = http::get(&url).await.map(|(status, _)| status);
            if seen == Ok(200) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus on {} was not ready within {timeout:?}; last saw: {seen:?}; its log:\n{}",
                self.addr,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query through the HTTP API (/api/v1/query). `Err` carries what came back
    /// instead of a vector, for an `eventually` to show.
    pub async fn query(&self, promql: &str) -> Result<Vec<Series>, String> {
        let url = url::Url::parse_with_params(
            &format!("http://{}/api/v1/query", self.addr),
            [("query", promql)],
        )
        .expect("query URL");
        let (status, body) = http::get(url.as_str()).await?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}"))?;
        if answer["status"] != "success" || answer["data"]["resultType"] != "vector" {
            return Err(format!("not a successful vector: {body}"));
        }
        let result = answer["data"]["result"].as_array().cloned();
        let result = result.ok_or_else(|| format!("no result array: {body}"))?;
        result
            .iter()
            .map(|item| {
                let labels = item["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                // "value": [<unix time>, "<value as a string>"]
                let value = item["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("unreadable sample {item}"))?;
                Ok(Series { labels, value })
            })
            .collect()
    }

    fn log_tail(&self) -> String {
        let logs = self.logs.lock().unwrap();
        logs[logs.len().saturating_sub(LOG_TAIL)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus log (last {LOG_TAIL} lines) ----\n{}\n---- end of prometheus log ----",
                self.log_tail()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies deploy/prometheus.yml and deploy/prometheus-rules.yml into `dir` and writes
/// `dir/targets/herald.json` listing `targets`; returns the config's path.
pub fn write_config_dir(dir: &Path, targets: &[SocketAddr]) -> PathBuf {
    std::fs::create_dir_all(dir.join("targets")).expect("create prometheus temp dir");
    for file in ["prometheus.yml", "prometheus-rules.yml"] {
        std::fs::copy(Path::new(DEPLOY).join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("copy deploy/{file}: {e}"));
    }
    let targets: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
    let file_sd = serde_json::json!([{ "targets": targets, "labels": {} }]);
    std::fs::write(dir.join("targets/herald.json"), file_sd.to_string())
        .expect("write targets/herald.json");
    dir.join("prometheus.yml")
}

/// Runs `promtool ARGS`; a missing promtool fails the test with the install command.
pub fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not installed (not found on PATH): {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

/// A fresh directory under the system temp dir; the caller removes it.
pub fn temp_dir(what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("herald-it-{what}-{nanos}"));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
