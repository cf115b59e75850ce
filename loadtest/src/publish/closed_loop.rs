//! The closed loop of `api_publish`: C connections, connection `i` publishing on channel
//! `i`, each sending one publication, waiting for its answer, recording the time, and
//! sending the next, until the duration is up. Publications/s is then what the path
//! sustains at C in flight, and the latency percentiles are per request.
//!
//! One channel per connection keeps each channel's publications in the order they were
//! numbered (one request in flight on it), so the subscribers' gap and duplicate checks
//! hold as in every other scenario.

use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use super::pace::Published;
use super::via_api::{Answer, ApiConn, ApiTarget};
use super::Sequences;
use crate::cli::PublishVia;
use crate::stamp::{encode_padded, now_ns};
use crate::tally;

/// Deadline for one connect, and for one request and its answer. A request past it
/// counts as failed and its connection is opened again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that failed this many times in a row stops publishing (the leg is then
/// not clean, and says why).
const MAX_FAILURES_IN_A_ROW: u32 = 3;

/// Which path the publications take.
#[derive(Debug, Clone)]
pub enum Path {
    /// Herald's `POST /api/publish`.
    Api(ApiTarget),
    /// Redis directly, from the redis crate: `PUBLISH` or `FCALL herald_publish`.
    Redis { url: String, via: PublishVia },
}

/// One leg's outcome.
pub struct Leg {
    pub published: Published,
    /// Per request, send to whole answer, µs.
    pub latency: Histogram<u64>,
    /// Answers that carried an offset (history channels).
    pub offsets: u64,
    /// Requests that failed or timed out.
    pub failed: u64,
}

/// Publishes on `names[i]` (channel index `i`) from connection `i` for `duration`,
/// payloads padded to `payload_bytes`. Every connection is open before the clock starts;
/// one that cannot open fails the leg.
pub async fn run(
    path: &Path,
    names: &[String],
    seqs: &mut Sequences,
    duration: Duration,
    payload_bytes: usize,
) -> Result<Leg, String> {
    let mut conns = Vec::with_capacity(names.len());
    for _ in names {
        conns.push(Conn::open(path).await?);
    }
    let path = Rc::new(path.clone());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for (channel, (conn, name)) in conns.into_iter().zip(names).enumerate() {
        let channel = channel as u32;
        let worker = Publishing {
            path: path.clone(),
            conn: Some(conn),
            name: name.clone(),
            channel,
            next: seqs.peek(channel),
            payload_bytes,
        };
        tasks.spawn_local(worker.until(deadline));
    }
    let mut leg = Leg {
        published: Published {
            per_channel: vec![0; names.len()],
            sent: 0,
            failed_batches: 0,
            first_error: None,
            elapsed_s: 0.0,
        },
        latency: tally::histogram(),
        offsets: 0,
        failed: 0,
    };
    while let Some(done) = tasks.join_next().await {
        let done = done.map_err(|e| format!("a publishing task died: {e}"))?;
        seqs.skip(done.channel, done.sent);
        leg.published.per_channel[done.channel as usize] = done.sent;
        leg.published.sent += done.sent;
        leg.published.failed_batches += done.failed;
        if leg.published.first_error.is_none() {
            leg.published.first_error = done.first_error;
        }
        leg.offsets += done.offsets;
        leg.failed += done.failed;
        leg.latency
            .add(&done.latency)
            .map_err(|e| format!("merging latencies: {e}"))?;
    }
    leg.published.elapsed_s = start.elapsed().as_secs_f64();
    Ok(leg)
}

/// An open connection of either path.
enum Conn {
    Api(ApiConn),
    Redis(MultiplexedConnection),
}

impl Conn {
    async fn open(path: &Path) -> Result<Conn, String> {
        let opening = async {
            match path {
                Path::Api(target) => ApiConn::connect(target).await.map(Conn::Api),
                Path::Redis { url, .. } => super::connect(url).await.map(Conn::Redis),
            }
        };
        timeout(REQUEST_TIMEOUT, opening)
            .await
            .map_err(|_| format!("connecting took over {REQUEST_TIMEOUT:?}"))?
    }

    /// Sends one publication; true if it was answered with an offset.
    async fn publish(&mut self, path: &Path, name: &str, payload: &str) -> Result<bool, String> {
        match (self, path) {
            (Conn::Api(conn), Path::Api(target)) => {
                Ok(conn.publish(target, name, payload).await? == Answer::Offset)
            }
            (Conn::Redis(con), Path::Redis { via, .. }) => {
                let mut cmd = match via {
                    PublishVia::Publish => redis::cmd("PUBLISH"),
                    PublishVia::Fcall => {
                        let mut cmd = redis::cmd("FCALL");
                        cmd.arg("herald_publish").arg(1);
                        cmd
                    }
                };
                cmd.arg(name).arg(payload);
                // PUBLISH answers the receiver count, herald_publish the offset or nil.
                let answer: redis::Value = cmd
                    .query_async(con)
                    .await
                    .map_err(|e| format!("{}: {e}", via.name()))?;
                Ok(matches!(
                    answer,
                    redis::Value::BulkString(_) | redis::Value::SimpleString(_)
                ))
            }
            _ => Err("connection of another path".into()),
        }
    }
}

/// One connection's loop.
struct Publishing {
    path: Rc<Path>,
    /// `None` after a failure, until it is opened again.
    conn: Option<Conn>,
    name: String,
    channel: u32,
    /// The sequence number of its next publication on `channel`.
    next: u64,
    payload_bytes: usize,
}

/// What one connection did.
struct Done {
    channel: u32,
    sent: u64,
    failed: u64,
    offsets: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

impl Publishing {
    async fn until(mut self, deadline: Instant) -> Done {
        let mut done = Done {
            channel: self.channel,
            sent: 0,
            failed: 0,
            offsets: 0,
            first_error: None,
            latency: tally::histogram(),
        };
        let first = self.next;
        let mut failures_in_a_row = 0;
        while Instant::now() < deadline && failures_in_a_row < MAX_FAILURES_IN_A_ROW {
            match self.once().await {
                Ok((took, offset)) => {
                    failures_in_a_row = 0;
                    let us = took.as_micros().min(u64::MAX as u128) as u64;
                    done.latency.saturating_record(us.max(1));
                    done.offsets += u64::from(offset);
                }
                Err(e) => {
                    failures_in_a_row += 1;
                    done.failed += 1;
                    done.first_error.get_or_insert(e);
                    self.conn = None;
                }
            }
        }
        // Sent or not, a number taken is used: one that never went out counts as lost.
        done.sent = self.next - first;
        done
    }

    /// One publication: (time to the whole answer, answered with an offset).
    async fn once(&mut self) -> Result<(Duration, bool), String> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(&self.path).await?);
        }
        let conn = self.conn.as_mut().expect("opened above");
        let payload = encode_padded(now_ns(), self.next, self.channel, self.payload_bytes);
        self.next += 1;
        let sent = Instant::now();
        let offset = timeout(
            REQUEST_TIMEOUT,
            conn.publish(&self.path, &self.name, &payload),
        )
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
        Ok((sent.elapsed(), offset))
    }
}
