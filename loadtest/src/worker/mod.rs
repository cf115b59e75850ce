//! A worker process: connects its slice of clients, then answers the coordinator's
//! commands until told to exit, its stdin closes, or its lifetime runs out.
//!
//! One current_thread runtime: every client is a local task, so the process stays on one
//! core and its CPU use is a clean reading of what the generator costs.

pub mod state;

use std::cell::RefCell;
use std::io::Write;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::LocalSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{self, Rejoin, RejoinAt};
use crate::events::{self, Event, Ready, Report};
use crate::peer::Endpoint;
use crate::plan::{channel_name, Plan};
use crate::procfs;
use crate::tally;
use crate::wave::Wave;
use state::State;

/// How often a worker tells the coordinator how many deliveries it has seen.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Descriptors a worker needs besides its clients (runtime, pipes, stdio).
pub const FD_MARGIN: u64 = 64;

pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald-loadtest worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match LocalSet::new().block_on(&runtime, run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-loadtest worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no plan on stdin")?;
    let plan: Plan = serde_json::from_str(&line).map_err(|e| format!("bad plan: {e}"))?;
    let lifetime = tokio::time::sleep(Duration::from_millis(plan.lifetime_ms));
    tokio::pin!(lifetime);
    let clients = plan.clients.len() as u32;
    if let Some(limit) = procfs::open_files_limit() {
        if clients as u64 + FD_MARGIN > limit {
            return Err(format!(
                "{clients} clients need more than the open-files limit {limit}: \
                 raise `ulimit -n` or use more --workers"
            ));
        }
    }
    let endpoint = Rc::new(plan.peer.endpoint()?);
    // Where clients come back to in a reconnect wave, with its upgrade path (no channels).
    let rejoin_at = match &plan.rejoin {
        Some(peer) => Some(Rc::new(RejoinAt {
            endpoint: peer.endpoint()?,
            path: peer.request_path(&[], plan.token.as_deref())?,
        })),
        None => None,
    };
    let wake = Rc::new(Notify::new());
    let state = Rc::new(RefCell::new(State::new(wake.clone(), plan.not_before_ns)));
    let gate = Rc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let plan = Rc::new(plan);
    let (wave_tx, wave_rx) = watch::channel(None);
    let started = Instant::now();
    for index in plan.clients.clone() {
        let task = client_task(
            index,
            plan.clone(),
            endpoint.clone(),
            state.clone(),
            gate.clone(),
            rejoin_at.clone().map(|at| (at, wave_rx.clone())),
        );
        tokio::task::spawn_local(task);
    }

    while state.borrow().settled() < clients {
        tokio::select! {
            _ = wake.notified() => {}
            _ = &mut lifetime => return Err("lifetime over while connecting".into()),
            line = stdin.next_line() => match line {
                Ok(Some(line)) if line.trim() != events::EXIT => {}
                _ => return Ok(()),
            },
        }
    }
    emit(&Event::Ready(ready(&state.borrow(), started.elapsed())))?;

    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut announced = 0;
    let mut wave_announced = false;
    loop {
        tokio::select! {
            _ = &mut lifetime => {
                eprintln!("herald-loadtest worker: lifetime over, exiting");
                return Ok(());
            }
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { return Ok(()) };
                match line.trim() {
                    events::REPORT => emit(&Event::Report(report(&mut state.borrow_mut())))?,
                    events::MARK => emit(&Event::Marked { epoch: state.borrow_mut().mark() })?,
                    events::EXIT => return emit(&Event::Bye),
                    other => match Wave::parse(other) {
                        Some(wave) => {
                            state.borrow_mut().start_wave();
                            wave_tx.send_replace(Some(wave));
                        }
                        None => eprintln!("herald-loadtest worker: unknown command {other:?}"),
                    },
                }
            }
            _ = wake.notified() => {}
            _ = progress.tick() => {
                let state = state.borrow();
                let (received, reached, live) = (state.tally.received, state.reached, state.live);
                emit(&Event::Progress { received, reached, live })?;
            }
        }
        let state = state.borrow();
        if state.all_reached() && announced != state.epoch {
            announced = state.epoch;
            emit(&Event::ReachedAll { epoch: announced })?;
        }
        if state.wave_over() && !wave_announced {
            wave_announced = true;
            emit(&Event::WaveOver)?;
        }
    }
}

async fn client_task(
    index: u32,
    plan: Rc<Plan>,
    endpoint: Rc<Endpoint>,
    state: Rc<RefCell<State>>,
    gate: Rc<Semaphore>,
    wave: Option<(Rc<RejoinAt>, watch::Receiver<Option<Wave>>)>,
) {
    let channels = plan.layout.channels_of(index);
    let names: Vec<String> = channels
        .iter()
        .map(|&c| channel_name(&plan.channel_prefix, c))
        .collect();
    let path = match plan.peer.request_path(&names, plan.token.as_deref()) {
        Ok(path) => path,
        Err(e) => return state.borrow_mut().failed(index, e),
    };
    let source = match plan.source_addrs.len() {
        0 => None,
        n => Some(plan.source_addrs[index as usize % n]),
    };
    let Ok(permit) = gate.acquire().await else {
        return;
    };
    let started = Instant::now();
    let deadline = Duration::from_millis(plan.connect_timeout_ms);
    let connecting = client::connect(&plan.peer, &endpoint, source, &path, &channels, index);
    let outcome = tokio::time::timeout(deadline, connecting).await;
    drop(permit);
    let client = match outcome {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return state.borrow_mut().failed(index, e.kind()),
        Err(_) => return state.borrow_mut().failed(index, "timeout".into()),
    };
    state
        .borrow_mut()
        .connected(started.elapsed().as_micros() as u64);
    let rejoin = wave.map(|(at, wave)| Rejoin {
        index,
        names,
        at,
        source,
        timeout: deadline,
        wave,
    });
    client.run(&plan.peer, &state, rejoin).await;
}

fn ready(state: &State, elapsed: Duration) -> Ready {
    Ready {
        connected: state.connected,
        failed: state.failed.clone(),
        errors: state.errors.clone(),
        connect_us: tally::to_pairs(&state.connect_latency),
        elapsed_us: elapsed.as_micros() as u64,
        cpu_ticks: procfs::cpu_ticks(None).unwrap_or(0),
    }
}

fn report(state: &mut State) -> Report {
    Report {
        tally: state.tally.take(),
        ends: std::mem::take(&mut state.ends),
        live: state.live,
        cpu_ticks: procfs::cpu_ticks(None).unwrap_or(0),
        wave: state.wave.as_ref().map(|w| Box::new(w.wire())),
    }
}

/// Writes one event line; fails when the coordinator is gone.
fn emit(event: &Event) -> Result<(), String> {
    let line = serde_json::to_string(event).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("coordinator gone: {e}"))
}
