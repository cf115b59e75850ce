//! CPU and memory over one measured window: the server's, from /proc/PID, and the
//! generator's own (coordinator plus every worker), so a report can say whether the
//! generator rather than the server was the bottleneck.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::procfs;

/// How often the server's RSS is sampled for the peak within a window.
const RSS_SAMPLE: Duration = Duration::from_millis(100);
/// A generator process above this share of one core may be what limits the numbers.
pub const BUSY_CORE_PCT: f64 = 85.0;

pub struct Window {
    started: Instant,
    server_pid: Option<u32>,
    server_ticks: Option<u64>,
    own_ticks: u64,
    worker_ticks: Vec<u64>,
    machine_ticks: Option<u64>,
    rss_peak: Rc<Cell<u64>>,
    sampler: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// None without --server-pid, or when the process could not be read.
    pub server: Option<ServerUse>,
    pub generator: GeneratorUse,
    /// Cores kept busy by every process on the machine (from /proc/stat), server and
    /// generator included; the rest is other load that competed with them.
    pub machine_busy_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUse {
    /// utime+stime spent in the window.
    pub cpu_s: f64,
    /// cpu_s over the window's wall time: 1.0 = one core busy throughout.
    pub cores: f64,
    /// Highest VmRSS sampled in the window (every 100 ms).
    pub rss_peak_kib: u64,
    /// VmRSS at the window's end.
    pub rss_end_kib: u64,
    /// VmHWM: the highest RSS since the server started.
    pub hwm_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GeneratorUse {
    /// CPU of the coordinator and every worker in the window.
    pub cpu_s: f64,
    pub coordinator_core_pct: f64,
    pub workers_core_pct: Vec<f64>,
    /// The busiest generator process, % of one core.
    pub busiest_core_pct: f64,
}

impl Window {
    /// Starts a window; `worker_ticks` are the workers' CPU ticks at its start.
    pub fn open(server_pid: Option<u32>, worker_ticks: Vec<u64>) -> Window {
        let rss_peak = Rc::new(Cell::new(0));
        let sampler = server_pid.map(|pid| {
            let peak = rss_peak.clone();
            tokio::task::spawn_local(async move {
                loop {
                    if let Some(memory) = procfs::memory(pid) {
                        peak.set(peak.get().max(memory.rss_kib));
                    }
                    tokio::time::sleep(RSS_SAMPLE).await;
                }
            })
        });
        Window {
            started: Instant::now(),
            server_pid,
            server_ticks: server_pid.and_then(|pid| procfs::cpu_ticks(Some(pid))),
            own_ticks: procfs::cpu_ticks(None).unwrap_or(0),
            worker_ticks,
            machine_ticks: procfs::machine_busy_ticks(),
            rss_peak,
            sampler,
        }
    }

    /// Ends the window; `worker_ticks` are the workers' CPU ticks now.
    pub fn close(self, worker_ticks: &[u64]) -> Usage {
        if let Some(sampler) = &self.sampler {
            sampler.abort();
        }
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let hz = procfs::ticks_per_second();
        let seconds = |ticks: u64| ticks as f64 / hz;
        let pct = |ticks: u64| 100.0 * seconds(ticks) / wall;
        let own = procfs::cpu_ticks(None)
            .unwrap_or(self.own_ticks)
            .saturating_sub(self.own_ticks);
        let workers: Vec<u64> = worker_ticks
            .iter()
            .zip(self.worker_ticks.iter().chain(std::iter::repeat(&0)))
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        let workers_pct: Vec<f64> = workers.iter().map(|&t| pct(t)).collect();
        let generator = GeneratorUse {
            cpu_s: seconds(own + workers.iter().sum::<u64>()),
            coordinator_core_pct: pct(own),
            busiest_core_pct: workers_pct.iter().copied().fold(pct(own), f64::max),
            workers_core_pct: workers_pct,
        };
        let server = self.server_pid.and_then(|pid| {
            let ticks = procfs::cpu_ticks(Some(pid))?.saturating_sub(self.server_ticks?);
            let memory = procfs::memory(pid)?;
            Some(ServerUse {
                cpu_s: seconds(ticks),
                cores: seconds(ticks) / wall,
                rss_peak_kib: self.rss_peak.get().max(memory.rss_kib),
                rss_end_kib: memory.rss_kib,
                hwm_kib: memory.hwm_kib,
            })
        });
        let machine_busy_cores = self.machine_ticks.and_then(|then| {
            Some(seconds(procfs::machine_busy_ticks()?.saturating_sub(then)) / wall)
        });
        Usage {
            wall_s: wall,
            server,
            generator,
            machine_busy_cores,
        }
    }
}

impl Usage {
    /// What a reader must know before trusting numbers measured in this window.
    pub fn warnings(&self, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.generator.busiest_core_pct >= BUSY_CORE_PCT {
            out.push(format!(
                "{what}: a generator process used {:.0}% of a core: the generator, not the \
                 server, may be the bottleneck (try more --workers)",
                self.generator.busiest_core_pct
            ));
        }
        // The machine's CPUs, not this process's: the generator runs under `taskset`,
        // which `available_parallelism` would report.
        let cores = crate::procfs::machine_cpus().unwrap_or(1) as f64;
        let server = self.server.as_ref().map_or(0.0, |s| s.cores);
        let ours = server + self.generator.cpu_s / self.wall_s;
        let busy = self.machine_busy_cores.unwrap_or(ours).max(ours);
        // Ticks are 10 ms: below a second the machine's share is too coarse to judge.
        if busy >= 0.9 * cores && self.wall_s >= 1.0 {
            out.push(format!(
                "{what}: the machine had {busy:.1} of {cores} cores busy ({ours:.1} server and \
                 generator, {:.1} other processes): the numbers describe the machine, not \
                 only the server",
                (busy - ours).max(0.0)
            ));
        }
        out
    }
}
