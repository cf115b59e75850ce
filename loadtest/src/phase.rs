//! One measured publishing window: reset the workers' counts, publish at the given rates,
//! wait for the last deliveries, collect, and compute what the report shows.

use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::publish::pace::{Control, Published, Stream};
use crate::publish::Sequences;
use crate::report::Phase;
use crate::run::Run;
use crate::tally::Latency;
use crate::usage::Window;

/// Longest wait for late deliveries after publishing stops, beyond --settle stalls.
const DRAIN_CAP: Duration = Duration::from_secs(60);

/// Publishes `streams` for `duration` and measures the deliveries.
pub async fn measure(
    run: &mut Run,
    name: String,
    streams: Vec<Stream>,
    duration: Duration,
) -> Result<Phase, String> {
    let rate: f64 = streams.iter().map(|s| s.rate).sum();
    eprintln!("{}: phase {name}: {rate}/s for {duration:?}", run.scenario);
    let baseline = run.fleet.report().await?;
    let window = Window::open(run.common.server_pid, baseline.cpu_ticks);
    let published = run.publish(&streams, duration).await?;
    conclude(run, name, rate, duration, published, window).await
}

/// Publishes `streams` while `during` drives the fleet, and measures the deliveries; the
/// window ends when `during` returns (or after `max`).
pub async fn measure_during<T>(
    run: &mut Run,
    name: String,
    streams: Vec<Stream>,
    max: Duration,
    during: impl AsyncFnOnce(&mut Fleet, &Control) -> T,
) -> Result<(Phase, T), String> {
    let rate: f64 = streams.iter().map(|s| s.rate).sum();
    eprintln!("{}: phase {name}: {rate}/s", run.scenario);
    let baseline = run.fleet.report().await?;
    let window = Window::open(run.common.server_pid, baseline.cpu_ticks);
    let (published, out) = run.publish_during(&streams, max, during).await?;
    let duration = Duration::from_secs_f64(published.elapsed_s);
    let phase = conclude(run, name, rate, duration, published, window).await?;
    Ok((phase, out))
}

/// Measures the deliveries of publications `publish` makes with its own publisher (the
/// closed loop of `api_publish`: no target rate; the phase's rate is the one achieved).
/// `publish` numbers its publications from the run's sequences and returns what it sent
/// beside anything of its own.
pub async fn measure_with<T>(
    run: &mut Run,
    name: String,
    duration: Duration,
    publish: impl AsyncFnOnce(&mut Sequences) -> Result<(Published, T), String>,
) -> Result<(Phase, T), String> {
    eprintln!(
        "{}: phase {name}: as fast as answered, for {duration:?}",
        run.scenario
    );
    let baseline = run.fleet.report().await?;
    let window = Window::open(run.common.server_pid, baseline.cpu_ticks);
    let (published, out) = publish(&mut run.seqs).await?;
    let rate = published.sent as f64 / duration.as_secs_f64().max(1e-9);
    let phase = conclude(run, name, rate, duration, published, window).await?;
    Ok((phase, out))
}

/// After publishing: waits for the last deliveries, collects, computes the phase.
async fn conclude(
    run: &mut Run,
    name: String,
    rate: f64,
    duration: Duration,
    published: Published,
    window: Window,
) -> Result<Phase, String> {
    let expected: u64 = published
        .per_channel
        .iter()
        .zip(&run.audience)
        .map(|(sent, subscribers)| sent * subscribers)
        .sum();
    let drain_started = Instant::now();
    run.fleet
        .drain(expected, run.common.settle, DRAIN_CAP)
        .await?;
    let drain_s = drain_started.elapsed().as_secs_f64();
    let report = run.fleet.report().await?;
    let usage = window.close(&report.cpu_ticks);
    run.warnings
        .extend(usage.warnings(&format!("phase {name}")));
    if published.sent < (rate * duration.as_secs_f64() * 0.95) as u64 {
        run.warnings.push(format!(
            "phase {name}: the publisher sent only {} publications",
            published.sent
        ));
    }
    let tally = &report.tally;
    let unique = tally.received.saturating_sub(tally.duplicates);
    let window_s = published.elapsed_s.max(duration.as_secs_f64());
    Ok(Phase {
        name,
        rate,
        duration_s: duration.as_secs_f64(),
        expected,
        received: tally.received,
        lost: expected.saturating_sub(unique),
        gaps: tally.gaps,
        duplicates: tally.duplicates,
        lagged: tally.lagged,
        foreign: tally.foreign,
        stale: tally.stale,
        deliveries_per_s: tally.received as f64 / window_s,
        latency_ms: Latency::of(&tally.latency),
        drain_s,
        ended: report.ends,
        deliveries_per_server_cpu_s: usage
            .server
            .as_ref()
            .filter(|s| s.cpu_s > 0.0)
            .map(|s| tally.received as f64 / s.cpu_s),
        usage,
        published,
    })
}
