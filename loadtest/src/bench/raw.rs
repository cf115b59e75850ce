//! The raw results loadtest/run.sh keeps, one file per run, so every median on the
//! benchmark page can be checked:
//!
//! - `PEER-SCENARIO-RUN.json`: the run's `--json` report (also for exit status 3, "measured
//!   but not clean": those numbers count, and the page says the run was not clean);
//! - `PEER-SCENARIO-RUN.failed`: a run that measured nothing (exit status 1, a timeout):
//!   its status and the last lines of its log;
//! - `meta.txt`: `Key: value` lines (date, machine, command, versions), shown in order;
//! - PEER is `herald`, `reference` (herald-reference) or `nchan`;
//! - `herald_cluster-SCENARIO-RUN.json` / `.failed` and `meta-cluster.txt`: the same for
//!   Herald on a Redis Cluster (`run.sh --redis cluster`), shown beside the others.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Servers the runner knows, in page order: Herald, herald-reference (the one-thread
/// limit of issue 14, loadtest/src/reference/), Nchan.
pub const PEERS: [&str; 3] = ["herald", REFERENCE, "nchan"];

/// herald-reference: the peer Herald's issue 14 targets are ratios against.
pub const REFERENCE: &str = "reference";

/// Herald on a Redis Cluster: the runs of `run.sh --redis cluster`, a column of its own.
pub const CLUSTER: &str = "herald_cluster";

/// Scenarios in page order.
pub const SCENARIOS: [&str; 9] = [
    "fanout",
    "fanout_history",
    "saturate",
    "channels",
    "idle",
    "connect",
    "outage",
    "resume",
    "api_publish",
];

/// One run of one scenario against one peer.
#[derive(Debug)]
pub enum Run {
    Report(Value),
    /// Why it measured nothing.
    Failed(String),
}

/// Everything in one raw directory.
#[derive(Debug, Default)]
pub struct Raw {
    pub meta: Vec<(String, String)>,
    /// `meta-cluster.txt`: how the Redis Cluster runs were made.
    pub meta_cluster: Vec<(String, String)>,
    /// Per (peer, scenario), ordered by run number.
    runs: BTreeMap<(String, String), Vec<(u32, Run)>>,
}

impl Raw {
    pub fn load(dir: &Path) -> Result<Raw, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut raw = Raw::default();
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let text = || std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"));
            if name == "meta.txt" {
                raw.meta = parse_meta(&text()?);
                continue;
            }
            if name == "meta-cluster.txt" {
                raw.meta_cluster = parse_meta(&text()?);
                continue;
            }
            let Some((stem, kind)) = name.rsplit_once('.') else {
                continue;
            };
            let Some((peer, scenario, number)) = parse_stem(stem) else {
                continue;
            };
            let run = match kind {
                "json" => {
                    let text = text()?;
                    let line = text.lines().rev().find(|l| l.starts_with('{'));
                    let value = line
                        .and_then(|line| serde_json::from_str(line).ok())
                        .ok_or_else(|| format!("{name}: no JSON report in it"))?;
                    Run::Report(value)
                }
                "failed" => Run::Failed(text()?.trim().to_owned()),
                _ => continue,
            };
            raw.runs
                .entry((peer.to_owned(), scenario.to_owned()))
                .or_default()
                .push((number, run));
        }
        for runs in raw.runs.values_mut() {
            runs.sort_by_key(|(number, _)| *number);
        }
        Ok(raw)
    }

    /// Whether any run of this pair is present (measured or failed).
    pub fn ran(&self, peer: &str, scenario: &str) -> bool {
        self.runs.contains_key(&key(peer, scenario))
    }

    /// Every run of the pair, in order.
    pub fn runs(&self, peer: &str, scenario: &str) -> impl Iterator<Item = &Run> {
        self.runs
            .get(&key(peer, scenario))
            .into_iter()
            .flatten()
            .map(|(_, run)| run)
    }

    /// The reports of the runs that measured.
    pub fn reports(&self, peer: &str, scenario: &str) -> Vec<&Value> {
        self.runs(peer, scenario)
            .filter_map(|run| match run {
                Run::Report(value) => Some(value),
                Run::Failed(_) => None,
            })
            .collect()
    }

    /// The first value of a meta key (of the Redis Cluster runs' when only they ran).
    pub fn meta(&self, key: &str) -> Option<&str> {
        let meta = if self.meta.is_empty() {
            &self.meta_cluster
        } else {
            &self.meta
        };
        meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether any run of `peer` is present, in any scenario.
    pub fn has_peer(&self, peer: &str) -> bool {
        self.runs.keys().any(|(p, _)| p == peer)
    }

    /// Whether any Redis Cluster run is present.
    pub fn has_cluster(&self) -> bool {
        self.has_peer(CLUSTER)
    }
}

fn key(peer: &str, scenario: &str) -> (String, String) {
    (peer.to_owned(), scenario.to_owned())
}

/// `herald-fanout-2` -> ("herald", "fanout", 2).
fn parse_stem(stem: &str) -> Option<(&str, &str, u32)> {
    let mut parts = stem.split('-');
    let (peer, scenario, number) = (parts.next()?, parts.next()?, parts.next()?);
    let known = PEERS.contains(&peer) || peer == CLUSTER;
    if parts.next().is_some() || !known || !SCENARIOS.contains(&scenario) {
        return None;
    }
    Some((peer, scenario, number.parse().ok()?))
}

fn parse_meta(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_peer_scenario_and_run() {
        assert_eq!(parse_stem("nchan-idle-3"), Some(("nchan", "idle", 3)));
        assert_eq!(
            parse_stem("reference-connect-1"),
            Some(("reference", "connect", 1))
        );
        assert_eq!(parse_stem("herald-fanout"), None);
        assert_eq!(parse_stem("other-fanout-1"), None);
        assert_eq!(parse_stem("herald-fanout-1-x"), None);
        assert_eq!(
            parse_stem("herald-fanout_history-2"),
            Some(("herald", "fanout_history", 2))
        );
        assert_eq!(
            parse_stem("herald-api_publish-1"),
            Some(("herald", "api_publish", 1))
        );
        assert_eq!(
            parse_stem("herald_cluster-channels-3"),
            Some(("herald_cluster", "channels", 3))
        );
    }

    #[test]
    fn meta_keeps_its_order_and_colons_in_values() {
        let meta = parse_meta("Date: 2026-01-02 10:00 UTC\nnot a pair\nCommand: a: b\n");
        assert_eq!(
            meta,
            vec![
                ("Date".into(), "2026-01-02 10:00 UTC".into()),
                ("Command".into(), "a: b".into())
            ]
        );
    }

    #[test]
    fn loads_reports_failures_and_meta() {
        let dir = std::env::temp_dir().join(format!("herald-bench-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("meta.txt"), "Mode: quick\n").unwrap();
        std::fs::write(dir.join("herald-idle-2.json"), "{\"clean\":false}\n").unwrap();
        std::fs::write(dir.join("herald-idle-1.json"), "{\"clean\":true}\n").unwrap();
        std::fs::write(dir.join("nchan-idle-1.failed"), "exit 1\n").unwrap();
        let raw = Raw::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(raw.meta("Mode"), Some("quick"));
        let reports = raw.reports("herald", "idle");
        assert_eq!(reports[0]["clean"], Value::Bool(true));
        assert_eq!(reports[1]["clean"], Value::Bool(false));
        assert!(raw.reports("nchan", "idle").is_empty());
        assert!(raw.ran("nchan", "idle"));
        assert!(!raw.ran("nchan", "fanout"));
    }
}
