//! The coordinator's side of the worker processes: spawn them, send commands, gather
//! their answers, merge what they counted.
//!
//! Each worker's stdout is read by a local task that forwards parsed events into one
//! queue; every wait here has a deadline, and a worker whose stdout ends is an error.
//! Workers are spawned with kill_on_drop, so a coordinator that fails takes its own
//! workers down with it.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::events::{self, Event};
use crate::plan::Plan;
use crate::tally::{self, Tally};
use crate::wave::{Wave, WaveSummary};

/// Deadline for a worker to answer a command.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

/// What a worker last said about its progress.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    received: u64,
    live: u32,
    /// Highest epoch in which every live client of the worker was reached.
    reached_epoch: u32,
    /// Every client of the worker has come back from the reconnect wave (or failed to).
    wave_over: bool,
}

pub struct Fleet {
    workers: Vec<Worker>,
    events: mpsc::UnboundedReceiver<(usize, Option<Event>)>,
    progress: Vec<Progress>,
}

/// Every worker's `ready`, merged.
pub struct Ready {
    pub connected: u32,
    pub failed: HashSet<u32>,
    pub errors: BTreeMap<String, u64>,
    pub connect_latency: Histogram<u64>,
    /// The slowest worker's time from first attempt to last client settled.
    pub elapsed: Duration,
    pub cpu_ticks: Vec<u64>,
}

/// Every worker's `report`, merged.
pub struct Report {
    pub tally: Tally,
    pub ends: BTreeMap<String, u64>,
    pub live: u32,
    pub cpu_ticks: Vec<u64>,
    /// The reconnect wave so far, when one began.
    pub wave: Option<WaveSummary>,
}

impl Fleet {
    /// Starts one worker process per plan.
    pub async fn spawn(plans: &[Plan]) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut workers = Vec::new();
        for (index, plan) in plans.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start worker {index}: {e}"))?;
            let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("worker pipes missing".into());
            };
            let line = serde_json::to_string(plan).map_err(|e| e.to_string())? + "\n";
            stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("worker {index}: {e}"))?;
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&line) {
                        Ok(event) => drop(tx.send((index, Some(event)))),
                        Err(e) => eprintln!("worker {index}: unreadable line {line:?}: {e}"),
                    }
                }
                let _ = tx.send((index, None));
            });
            workers.push(Worker { child, stdin });
        }
        let progress = vec![Progress::default(); workers.len()];
        Ok(Fleet {
            workers,
            events,
            progress,
        })
    }

    /// Waits until every worker has connected or failed all its clients.
    pub async fn ready(&mut self, within: Duration) -> Result<Ready, String> {
        let answers = self
            .gather(Instant::now() + within, "ready", |event| match event {
                Event::Ready(ready) => Some(ready),
                _ => None,
            })
            .await?;
        let mut merged = Ready {
            connected: 0,
            failed: HashSet::new(),
            errors: BTreeMap::new(),
            connect_latency: tally::histogram(),
            elapsed: Duration::ZERO,
            cpu_ticks: Vec::new(),
        };
        for (index, ready) in answers.into_iter().enumerate() {
            merged.connected += ready.connected;
            merged.failed.extend(ready.failed);
            for (kind, n) in ready.errors {
                *merged.errors.entry(kind).or_default() += n;
            }
            tally::add_pairs(&mut merged.connect_latency, &ready.connect_us);
            merged.elapsed = merged.elapsed.max(Duration::from_micros(ready.elapsed_us));
            merged.cpu_ticks.push(ready.cpu_ticks);
            self.progress[index].live = ready.connected;
        }
        Ok(merged)
    }

    /// Everything counted since the previous report; the workers' counts restart at zero.
    pub async fn report(&mut self) -> Result<Report, String> {
        self.command(events::REPORT).await?;
        let answers = self
            .gather(
                Instant::now() + ANSWER_WITHIN,
                "report",
                |event| match event {
                    Event::Report(report) => Some(report),
                    _ => None,
                },
            )
            .await?;
        let waves: Vec<_> = answers
            .iter()
            .filter_map(|r| r.wave.as_deref().cloned())
            .collect();
        let mut merged = Report {
            tally: Tally::new(),
            ends: BTreeMap::new(),
            live: 0,
            cpu_ticks: Vec::new(),
            wave: (!waves.is_empty()).then(|| WaveSummary::merge(&waves)),
        };
        for report in answers {
            merged.tally.merge(&report.tally);
            for (how, n) in report.ends {
                *merged.ends.entry(how).or_default() += n;
            }
            merged.live += report.live;
            merged.cpu_ticks.push(report.cpu_ticks);
        }
        Ok(merged)
    }

    /// Starts a new epoch on every worker; returns once all have acknowledged it, so
    /// publications sent afterwards count in it.
    pub async fn mark(&mut self) -> Result<u32, String> {
        self.command(events::MARK).await?;
        let epochs = self
            .gather(
                Instant::now() + ANSWER_WITHIN,
                "mark",
                |event| match event {
                    Event::Marked { epoch } => Some(epoch),
                    _ => None,
                },
            )
            .await?;
        Ok(epochs.into_iter().min().unwrap_or(0))
    }

    /// Waits until every live client has had a publication on each of its channels in
    /// `epoch`; false at the deadline.
    pub async fn reached_all(&mut self, epoch: u32, deadline: Instant) -> Result<bool, String> {
        while self.progress.iter().any(|p| p.reached_epoch < epoch) {
            if !self.pump(deadline).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Starts the reconnect wave on every worker.
    pub async fn start_wave(&mut self, wave: Wave) -> Result<(), String> {
        self.command(&wave.command()).await
    }

    /// Waits until every worker's clients have come back from the wave (or failed to);
    /// false at the deadline.
    pub async fn wave_over(&mut self, deadline: Instant) -> Result<bool, String> {
        while self.progress.iter().any(|p| !p.wave_over) {
            if !self.pump(deadline).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits for deliveries to reach `expected`, or to stall for `settle`, or `cap`.
    pub async fn drain(
        &mut self,
        expected: u64,
        settle: Duration,
        cap: Duration,
    ) -> Result<(), String> {
        let started = Instant::now();
        let (mut last, mut changed) = (self.received(), Instant::now());
        while self.received() < expected && changed.elapsed() < settle && started.elapsed() < cap {
            self.pump(Instant::now() + Duration::from_millis(50))
                .await?;
            if self.received() != last {
                (last, changed) = (self.received(), Instant::now());
            }
        }
        Ok(())
    }

    /// Deliveries since the last report, as of the latest progress lines.
    pub fn received(&self) -> u64 {
        self.progress.iter().map(|p| p.received).sum()
    }

    /// Processes events until `until`; keeps progress current in the meantime.
    pub async fn idle_until(&mut self, until: Instant) -> Result<(), String> {
        while self.pump(until).await? {}
        Ok(())
    }

    /// Tells every worker to exit and waits for them; kills any that do not.
    pub async fn exit(mut self) {
        let _ = self.command(events::EXIT).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        for worker in &mut self.workers {
            if tokio::time::timeout_at(deadline, worker.child.wait())
                .await
                .is_err()
            {
                let _ = worker.child.kill().await;
            }
        }
    }

    async fn command(&mut self, word: &str) -> Result<(), String> {
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let line = format!("{word}\n");
            worker
                .stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("worker {index} gone: {e}"))?;
        }
        Ok(())
    }

    /// One answer per worker, picked out of its events in order.
    async fn gather<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        let mut answers: Vec<Option<T>> = self.workers.iter().map(|_| None).collect();
        while answers.iter().any(Option::is_none) {
            let Ok(next) = tokio::time::timeout_at(deadline, self.events.recv()).await else {
                return Err(format!("workers did not answer {what} in time"));
            };
            let (index, event) = next.ok_or("worker events closed")?;
            let event = event.ok_or_else(|| format!("worker {index} exited before {what}"))?;
            self.absorb(index, &event);
            if let Some(answer) = pick(event) {
                answers[index] = Some(answer);
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Handles one event if it comes before `until`; false when the time is up.
    async fn pump(&mut self, until: Instant) -> Result<bool, String> {
        match tokio::time::timeout_at(until, self.events.recv()).await {
            Err(_) => Ok(false),
            Ok(None) => Err("worker events closed".into()),
            Ok(Some((index, None))) => Err(format!("worker {index} exited")),
            Ok(Some((index, Some(event)))) => {
                self.absorb(index, &event);
                Ok(true)
            }
        }
    }

    fn absorb(&mut self, index: usize, event: &Event) {
        let progress = &mut self.progress[index];
        match *event {
            Event::Progress { received, live, .. } => {
                progress.received = received;
                progress.live = live;
            }
            Event::ReachedAll { epoch } => progress.reached_epoch = epoch,
            Event::WaveOver => progress.wave_over = true,
            Event::Report(ref report) => {
                progress.received = 0;
                progress.live = report.live;
            }
            _ => {}
        }
    }
}
