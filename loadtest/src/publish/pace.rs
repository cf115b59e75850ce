//! Publishing at fixed rates for a fixed time, spread evenly rather than in bursts.
//!
//! Publication k of a stream is due at k / rate after the start. The pacer sleeps until the
//! next due moment and then sends everything due by then as one batch: below ~1000/s that
//! is one publication per wake; above, tokio's millisecond timer makes it small batches
//! every millisecond, still smooth at the scale any latency here is measured in.

use std::cell::Cell;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{Publisher, Sequences};

/// Most publications in one batch (one Redis pipeline); a late publisher catches up in
/// pieces of this size.
const MAX_BATCH: usize = 1000;
/// A publisher this far behind its schedule when the time is up stops anyway.
const OVERRUN: Duration = Duration::from_secs(1);
/// Longest sleep between looks at `Control::stop`.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Shared with whatever runs beside the pacer: it may stop the pacer early, and reads how
/// many publications have gone out so far.
#[derive(Debug, Default)]
pub struct Control {
    pub stop: Cell<bool>,
    pub sent: Cell<u64>,
}

/// Publications at `rate` per second, round-robin over `channels`.
#[derive(Debug, Clone)]
pub struct Stream {
    pub channels: Vec<u32>,
    pub rate: f64,
}

/// What was published.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Publications per channel index.
    #[serde(skip)]
    pub per_channel: Vec<u64>,
    pub sent: u64,
    /// Batches that failed (their publications count as sent: some may have gone out).
    pub failed_batches: u64,
    pub first_error: Option<String>,
    /// From the first publication to the end of the last batch.
    pub elapsed_s: f64,
}

/// Runs `streams` for `duration`; every stream sends floor(rate × duration) publications.
pub async fn run(
    publisher: &mut Publisher,
    seqs: &mut Sequences,
    streams: &[Stream],
    duration: Duration,
    channels: u32,
) -> Published {
    run_until(
        publisher,
        seqs,
        streams,
        duration,
        channels,
        &Control::default(),
    )
    .await
}

/// As `run`, but stops early (within 50 ms) once `control.stop` is set, and keeps
/// `control.sent` current.
pub async fn run_until(
    publisher: &mut Publisher,
    seqs: &mut Sequences,
    streams: &[Stream],
    duration: Duration,
    channels: u32,
    control: &Control,
) -> Published {
    let mut published = Published {
        per_channel: vec![0; channels as usize],
        sent: 0,
        failed_batches: 0,
        first_error: None,
        elapsed_s: 0.0,
    };
    let totals: Vec<u64> = streams
        .iter()
        .map(|s| (s.rate * duration.as_secs_f64()).floor() as u64)
        .collect();
    let mut sent = vec![0u64; streams.len()];
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        batch.clear();
        for (i, stream) in streams.iter().enumerate() {
            let due = ((elapsed * stream.rate).floor() as u64 + 1).min(totals[i]);
            while sent[i] < due && batch.len() < MAX_BATCH && !stream.channels.is_empty() {
                batch.push(stream.channels[(sent[i] % stream.channels.len() as u64) as usize]);
                sent[i] += 1;
            }
        }
        if !batch.is_empty() {
            if let Err(e) = publisher.send(&batch, seqs).await {
                published.failed_batches += 1;
                published.first_error.get_or_insert(e);
            }
            for &channel in &batch {
                published.per_channel[channel as usize] += 1;
            }
            published.sent += batch.len() as u64;
            control.sent.set(control.sent.get() + batch.len() as u64);
        }
        if control.stop.get() {
            break;
        }
        let next_due = streams
            .iter()
            .enumerate()
            .filter(|&(i, _)| sent[i] < totals[i])
            .map(|(i, s)| sent[i] as f64 / s.rate)
            .reduce(f64::min);
        let Some(next_due) = next_due else { break };
        if start.elapsed() > duration + OVERRUN {
            break;
        }
        let due = start + Duration::from_secs_f64(next_due);
        tokio::time::sleep_until(due.min(Instant::now() + STOP_CHECK)).await;
    }
    published.elapsed_s = start.elapsed().as_secs_f64();
    published
}
