//! Results: the types every scenario fills in, printed as text or as one JSON line.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::publish::pace::Published;
use crate::tally::Latency;
use crate::usage::Usage;

/// The whole run; with --json this is the one line on stdout.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub scenario: &'static str,
    pub peer: String,
    /// How publications were made: `publish` (Redis PUBLISH), `fcall` (FCALL
    /// herald_publish), `post` (Nchan), `api` (Herald's POST /api/publish, beside Redis
    /// directly: api_publish).
    pub publish: &'static str,
    /// The Redis the publications went through: `single` (one redis-server: PUBLISH) or
    /// `cluster` (a Redis Cluster, `--redis redis+cluster://`: SPUBLISH on each channel's
    /// master). Reports from before it was recorded are single.
    pub redis: &'static str,
    pub target: String,
    pub clients: u32,
    pub workers: usize,
    pub connect: ConnectSummary,
    pub phases: Vec<Phase>,
    /// Scenario-specific results (saturate, idle, outage, resume, api_publish).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The same results as text lines, for the human report.
    #[serde(skip)]
    pub result_text: Vec<String>,
    /// False when the run saw what a healthy server must not do (see README).
    pub clean: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ConnectSummary {
    pub connected: u32,
    pub failed: u32,
    pub errors: BTreeMap<String, u64>,
    /// From the first attempt to the last client confirmed (slowest worker).
    pub elapsed_s: f64,
    pub per_s: f64,
    /// Per client: TCP connect to confirmation.
    pub latency_ms: Latency,
    /// From all clients confirmed until Redis showed every channel subscribed (Herald).
    pub redis_subscribed_after_s: Option<f64>,
    pub usage: Usage,
}

/// One measured publishing window.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    /// Target publications per second, all streams together.
    pub rate: f64,
    pub duration_s: f64,
    pub published: Published,
    /// Publications × subscribers of their channel, over connected clients.
    pub expected: u64,
    pub received: u64,
    /// expected − (received − duplicates): deliveries that never arrived.
    pub lost: u64,
    /// Of those, seen as sequence gaps (the rest were missing at the end).
    pub gaps: u64,
    pub duplicates: u64,
    /// Publications Herald said it dropped (`lagged`).
    pub lagged: u64,
    /// Stamps on channels the client never subscribed to: misrouted deliveries.
    pub foreign: u64,
    /// Publications from before the run, replayed by the server (Nchan's buffer).
    pub stale: u64,
    /// received / the publishing window.
    pub deliveries_per_s: f64,
    pub latency_ms: Latency,
    /// After publishing stopped, the wait for the last deliveries.
    pub drain_s: f64,
    /// Connections that ended during the phase, by how.
    pub ended: BTreeMap<String, u64>,
    pub usage: Usage,
    pub deliveries_per_server_cpu_s: Option<f64>,
}

impl Phase {
    /// Nothing lost, duplicated, misrouted or disconnected.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.lagged == 0
            && self.foreign == 0
            && self.ended.is_empty()
            && self.published.failed_batches == 0
    }
}

impl RunReport {
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string(self) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("cannot encode the report: {e}"),
            }
        } else {
            print!("{}", self.text());
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let c = &self.connect;
        let _ = writeln!(
            out,
            "{} against {} ({}), {} clients, {} worker process(es), publishing with {}{}",
            self.scenario,
            self.target,
            self.peer,
            self.clients,
            self.workers,
            match (self.publish, self.redis) {
                ("fcall", _) => "FCALL herald_publish",
                ("post", _) => "HTTP POST",
                ("api", _) => "POST /api/publish and, to compare, Redis directly",
                (_, "cluster") => "SPUBLISH",
                _ => "PUBLISH",
            },
            if self.redis == "cluster" {
                " on a Redis Cluster (to each channel's master)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  connect      {} ok, {} failed in {:.2} s ({:.0}/s); per client {}",
            c.connected,
            c.failed,
            c.elapsed_s,
            c.per_s,
            latency(&c.latency_ms)
        );
        for (kind, n) in &c.errors {
            let _ = writeln!(out, "    failed: {n} × {kind}");
        }
        if let Some(after) = c.redis_subscribed_after_s {
            let _ = writeln!(
                out,
                "  redis        every channel subscribed {:.3} s after the last welcome",
                after
            );
        }
        usage(&mut out, &c.usage, None);
        for phase in &self.phases {
            phase_text(&mut out, phase);
        }
        for line in &self.result_text {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "  clean        {}",
            if self.clean { "yes" } else { "NO" }
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "  ! {warning}");
        }
        out
    }
}

fn phase_text(out: &mut String, p: &Phase) {
    let _ = writeln!(
        out,
        "phase {} ({:.0} publications/s target, {:.1} s)",
        p.name, p.rate, p.duration_s
    );
    let _ = writeln!(
        out,
        "  published    {} ({:.1}/s; last one {:.2} s after the first){}",
        p.published.sent,
        p.published.sent as f64 / p.duration_s.max(1e-9),
        p.published.elapsed_s,
        match &p.published.first_error {
            Some(e) => format!(
                "; {} failed batches, first: {e}",
                p.published.failed_batches
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "  deliveries   expected {} received {} lost {} (gaps {}) duplicated {} lagged {} foreign {} stale {}",
        p.expected, p.received, p.lost, p.gaps, p.duplicates, p.lagged, p.foreign, p.stale
    );
    let _ = writeln!(
        out,
        "  rate         {:.0} deliveries/s (drain {:.2} s)",
        p.deliveries_per_s, p.drain_s
    );
    let _ = writeln!(out, "  latency      {}", latency(&p.latency_ms));
    for (how, n) in &p.ended {
        let _ = writeln!(out, "  ended        {n} × {how}");
    }
    usage(out, &p.usage, p.deliveries_per_server_cpu_s);
}

fn latency(l: &Latency) -> String {
    format!(
        "p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

fn usage(out: &mut String, u: &Usage, per_cpu: Option<f64>) {
    if let Some(s) = &u.server {
        let _ = writeln!(
            out,
            "  server       cpu {:.2} s ({:.0}% of a core), rss peak {:.1} MiB, end {:.1} MiB, hwm {:.1} MiB{}",
            s.cpu_s,
            100.0 * s.cores,
            s.rss_peak_kib as f64 / 1024.0,
            s.rss_end_kib as f64 / 1024.0,
            s.hwm_kib as f64 / 1024.0,
            per_cpu.map_or(String::new(), |d| format!(", {d:.0} deliveries per cpu-s"))
        );
    }
    let g = &u.generator;
    let workers: Vec<String> = g
        .workers_core_pct
        .iter()
        .map(|p| format!("{p:.0}%"))
        .collect();
    let _ = writeln!(
        out,
        "  generator    cpu {:.2} s over {:.2} s: coordinator {:.0}%, workers {} of a core{}",
        g.cpu_s,
        u.wall_s,
        g.coordinator_core_pct,
        workers.join(" "),
        u.machine_busy_cores
            .map_or(String::new(), |m| format!("; machine: {m:.2} cores busy"))
    );
}
