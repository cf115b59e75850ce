//! The soak of issue 15: redis-server is SIGKILLed every 3 s for 30 s while 2,000 clients
//! on 500 history channels receive a steady stream. It ends with Redis subscribed to exactly
//! the union of what the clients hold, every client receiving, Herald's RSS bounded, and
//! the accounting exact: per client and channel, publications received + those told missed
//! (`lagged`) == those that exist, every `gap` counted, and the metrics agreeing with what
//! the clients saw.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};

use crate::delivery::wait_channels;
use crate::history::{check_exactly_once, Pace, PublishLog, Publisher, Received};
use crate::redis_loss::{reconnects, wait_reconnect};
use crate::support::client::Frame;
use crate::support::{secs, Client, Gateway, Redis, TempDir};

const CHANNELS: usize = 500;
const CLIENTS: usize = 2_000;
const KILLS: u32 = 10;
const KILL_EVERY: Duration = Duration::from_secs(3);
/// Each channel gets one publication a second: 500 a second in all, about 4,000
/// deliveries a second (each channel has 8 subscribers on average, see `held_by`). At
/// twice that beside another build, the test's own Redis commands outlasted redis-rs's
/// 500 ms response timeout.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Measured on the 2-core dev host (debug build, 2,000 clients, 4,000 subscriptions):
/// Herald's RSS was 24-25 MiB once connected and peaked at 27-29 MiB over the soak. The bound
/// leaves 2x headroom; an unbounded queue, or tapes of 16,384 publications kept per
/// channel, would cross it.
const RSS_BOUND: u64 = 64 << 20;

/// Kept on the `--ignored` list: it takes about a minute (30 s of soak, plus connecting
/// 2,000 clients and checking some 100,000 deliveries) and loads both cores, too much for the
/// default run beside the other tests. Run it alone:
/// `cargo test --test it soak -- --ignored --nocapture`.
#[ignore = "a 30 s soak: cargo test --test it soak -- --ignored --nocapture"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_every_3s_under_load_loses_nothing() {
    let began = Instant::now();
    // AOF with fsync on every write: a SIGKILL loses no acknowledged publication and no
    // epoch, so there is nothing Herald may legitimately report as a gap. The AOF sits on
    // tmpfs: a SIGKILL leaves the page cache intact, so that loses nothing either. With it
    // on the shared disk beside another build, Redis stalled: Herald's 300 ms probe went
    // unanswered and the test's commands outlasted redis-rs's 500 ms timeout.
    let aof = TempDir::under(std::path::Path::new("/dev/shm"), "soak");
    let mut redis = Redis::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        aof.path().to_str().expect("a UTF-8 path"),
    ])
    .await;
    // The queue bound is not under test (`lagged` is counted if it comes); the test's
    // 2,000 connections all come from 127.0.0.1. Herald waits up to 2 s (full jitter)
    // before reconnecting, so that publications made on the restarted Redis meanwhile
    // must come from gap-fill; the 1 s probe rides out this host's stalls (300 ms did not).
    let args = [
        "--history",
        "soak:*=1000/5m",
        "--queue-capacity",
        "16384",
        "--max-connections-per-ip",
        "4000",
        "--redis-probe-interval",
        "1s",
        "--redis-timeout",
        "1s",
        "--redis-backoff-base",
        "2s",
        "--redis-backoff-max",
        "2s",
    ];
    let gw = Gateway::start(&redis.url(), &args).await;
    gw.wait_ready(secs(10)).await;

    let channels: Vec<String> = (0..CHANNELS).map(|c| format!("soak:{c}")).collect();
    let union: BTreeSet<&str> = (0..CLIENTS)
        .flat_map(held_by)
        .map(|c| channels[c].as_str())
        .collect();
    assert_eq!(union.len(), CHANNELS, "every channel has subscribers");
    // Every reader gives up at this deadline: the soak and the ending fit well within it.
    let deadline = Instant::now() + KILL_EVERY * KILLS + secs(90);
    let clients: Vec<(usize, Client)> = stream::iter(0..CLIENTS)
        .map(|i| {
            let held: Vec<&str> = held_by(i).map(|c| channels[c].as_str()).collect();
            let url = gw.ws_url(&format!("channels={}", held.join(",")));
            async move { (i, Client::connect(&url).await) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(i, client)| {
            let held: Vec<String> = held_by(i).map(|c| channels[c].clone()).collect();
            (i, tokio::spawn(read_until_fins(client, held, deadline)))
        })
        .collect();
    wait_channels(&redis, &union.iter().copied().collect::<Vec<_>>(), secs(10)).await;
    let rss_connected = gw.rss_bytes();

    let publishers: Vec<Publisher> = channels
        .iter()
        .map(|c| {
            let pace = Pace {
                batch: 1,
                every: PUBLISH_EVERY,
                total: None,
            };
            Publisher::spawn(&redis, c, 0, pace)
        })
        .collect();

    // The kills are the stimulus, paced by the clock; each waits for Herald's reconnect
    // (an event), so every kill is an outage Herald really went through and filled.
    let mut max_rss = rss_connected;
    let mut sample = tokio::time::interval(Duration::from_millis(250));
    sample.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let soak_start = Instant::now();
    for kill in 1..=KILLS {
        let due = soak_start + KILL_EVERY * kill;
        while Instant::now() < due {
            sample.tick().await;
            max_rss = max_rss.max(gw.rss_bytes());
        }
        let before = reconnects(&gw).await;
        redis.kill9();
        redis.restart().await;
        wait_reconnect(&gw, before).await;
        max_rss = max_rss.max(gw.rss_bytes());
    }
    let soaked = soak_start.elapsed();

    // The end: Herald is back on the last Redis and holds exactly the clients' union;
    // then each publisher stops and sends its `fin`, which every subscriber must get.
    gw.wait_ready(secs(10)).await;
    wait_channels(&redis, &union.iter().copied().collect::<Vec<_>>(), secs(10)).await;
    // A few at a time: 500 FCALLs at once on the test's one connection, each fsynced,
    // outlast redis-rs's response timeout on this busy host (seen: "timed out").
    let logs: Vec<PublishLog> = stream::iter(publishers)
        .map(|p| p.finish(&redis))
        .buffered(8)
        .collect()
        .await;
    let logs: HashMap<&str, PublishLog> = channels.iter().map(String::as_str).zip(logs).collect();

    let mut failures = Vec::new();
    let mut total = Tally::default();
    for (i, reader) in readers {
        let seen = match reader.await.expect("reader task") {
            Ok(seen) => seen,
            Err(e) => {
                failures.push(format!("client {i}: {e}"));
                continue;
            }
        };
        for (channel, events) in &seen {
            match account(events, &logs[channel.as_str()]) {
                Ok(tally) => total.add(&tally),
                Err(e) => failures.push(format!("client {i} on {channel}: {e}")),
            }
        }
    }
    max_rss = max_rss.max(gw.rss_bytes());

    let m = gw.metrics().await;
    let acked: usize = logs.values().map(|l| l.acked.len()).sum();
    let failed_batches: usize = logs.values().map(|l| l.failed_batches).sum();
    eprintln!(
        "soak: {KILLS} kills in {soaked:.1?} ({} reconnects); {acked} publications \
         acknowledged on {CHANNELS} channels ({failed_batches} failed in outages); \
         {} deliveries to {CLIENTS} clients; gap-filled {}; lagged missed {}; gaps {}; \
         RSS {} MiB connected, max {} MiB; {:.1?} in all",
        m.value("herald_redis_reconnects_total", &[]),
        total.received,
        m.value("herald_gapfill_publications_total", &[]),
        total.missed,
        total.gaps,
        rss_connected >> 20,
        max_rss >> 20,
        began.elapsed(),
    );

    assert!(
        failures.is_empty(),
        "{} clients or client-channel pairs broke the accounting (first 20):\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    assert_eq!(
        (
            m.value("herald_dropped_total", &[("reason", "queue_full")]),
            m.value("herald_gaps_total", &[]),
            m.value("herald_dropped_total", &[("reason", "slow_consumer")]),
        ),
        (total.missed as f64, total.gaps as f64, 0.0),
        "(dropped queue_full, gaps, dropped slow_consumer) in the metrics against \
         (lagged missed, gap frames, 0) the clients saw\n{}",
        m.text
    );
    // With AOF and fsync always the history survives every kill: a gap is history lost.
    assert_eq!(total.gaps, 0, "gap frames on a Redis that loses nothing");
    // Two runs filled 1,048 and 2,457: Herald's 2 s backoff leaves room to publish.
    assert!(
        m.value("herald_gapfill_publications_total", &[]) > 0.0,
        "no outage was gap-filled: the soak did not exercise the fill\n{}",
        m.text
    );
    let thin: Vec<_> = logs
        .iter()
        .filter(|(_, log)| log.acked.len() < 10)
        .map(|(c, log)| (c, log.acked.len()))
        .collect();
    assert!(
        thin.is_empty(),
        "channels without a steady stream: {thin:?}"
    );
    assert!(
        max_rss <= RSS_BOUND,
        "herald's RSS reached {} MiB, above the {} MiB bound ({} MiB once connected)",
        max_rss >> 20,
        RSS_BOUND >> 20,
        rss_connected >> 20
    );
}

/// The channels (indices) client `i` holds: `i % 500`, so every channel has 4 clients of
/// its own, and a second one spread across the others (never the same: 6i + 13 is odd).
fn held_by(i: usize) -> impl Iterator<Item = usize> {
    [i % CHANNELS, (i * 7 + 13) % CHANNELS].into_iter()
}

/// One thing a client received on a channel, in arrival order.
#[derive(Debug)]
enum Event {
    Publication(Received),
    /// `lagged`: this many publications were dropped for the client here.
    Lagged(u64),
    Gap,
}

/// Reads every frame until the `fin` of each channel in `held`, by `deadline`; returns the
/// events per channel. A close, an end, an unknown op or a frame after a channel's `fin` is
/// an error that says how far the client got.
async fn read_until_fins(
    mut client: Client,
    held: Vec<String>,
    deadline: Instant,
) -> Result<HashMap<String, Vec<Event>>, String> {
    let mut seen: HashMap<String, Vec<Event>> =
        held.iter().map(|c| (c.clone(), Vec::new())).collect();
    let mut open: BTreeSet<String> = held.into_iter().collect();
    let progress = |seen: &HashMap<String, Vec<Event>>| {
        seen.iter()
            .map(|(c, events)| format!("{c}: {} events", events.len()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    while !open.is_empty() {
        let frame = match tokio::time::timeout_at(deadline, client.next_frame(secs(3600))).await {
            Ok(Frame::Json(frame)) => frame,
            Ok(other) => return Err(format!("{other:?} after {}", progress(&seen))),
            Err(_) => {
                return Err(format!(
                    "no fin on {open:?} by the deadline; {}",
                    progress(&seen)
                ))
            }
        };
        let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
        if !open.contains(&channel) {
            return Err(format!("a frame not on an open channel: {frame}"));
        }
        let event = match frame["op"].as_str() {
            Some("message") => {
                let received = Received::from_frame(&frame, &channel)?;
                if received.fin {
                    open.remove(&channel);
                }
                Event::Publication(received)
            }
            Some("lagged") => match frame["missed"].as_u64() {
                Some(missed) => Event::Lagged(missed),
                None => return Err(format!("lagged without a count: {frame}")),
            },
            Some("gap") => Event::Gap,
            _ => return Err(format!("unexpected frame: {frame}")),
        };
        seen.get_mut(&channel).expect("held").push(event);
    }
    client.close().await;
    Ok(seen)
}

/// What one client's stream on one channel adds up to.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    missed: u64,
    gaps: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.received += other.received;
        self.missed += other.missed;
        self.gaps += other.gaps;
    }
}

/// The exact accounting of one client on one channel against what its publisher knows.
/// Offsets are dense from 1 in one epoch, so the `fin`'s n is how many publications exist
/// (every acknowledged one, and any of a failed batch that Redis ran before dying). Each
/// publication arrives at n one past the previous, or past a `lagged` by its count, at the
/// seq Redis acknowledged there; after a `gap` the next may be anywhere later. Without a
/// gap: received + missed == fin's n, exactly.
fn account(events: &[Event], log: &PublishLog) -> Result<Tally, String> {
    let (_, fin) = log.acked.last().expect("the publisher's fin");
    let acked: HashMap<u64, u64> = log.acked.iter().map(|(seq, o)| (o.n, *seq)).collect();
    let mut tally = Tally::default();
    let (mut next, mut after_gap) = (1, false);
    for (i, event) in events.iter().enumerate() {
        let r = match event {
            Event::Lagged(missed) => {
                tally.missed += missed;
                next += missed;
                continue;
            }
            Event::Gap => {
                tally.gaps += 1;
                after_gap = true;
                continue;
            }
            Event::Publication(r) => r,
        };
        let in_place = if after_gap {
            r.offset.n >= next
        } else {
            r.offset.n == next
        };
        if r.offset.epoch != fin.epoch || !in_place {
            return Err(format!(
                "expected n={next} of epoch {} at event {i}, got {} (events around: {:?})",
                fin.epoch,
                r.offset.text,
                &events[i.saturating_sub(3)..(i + 3).min(events.len())]
            ));
        }
        if let Some(seq) = acked.get(&r.offset.n).filter(|seq| **seq != r.seq) {
            return Err(format!(
                "seq {seq} was acknowledged at {}, the client got seq {} there",
                r.offset.text, r.seq
            ));
        }
        tally.received += 1;
        next = r.offset.n + 1;
        after_gap = false;
    }
    let last = events.last().and_then(|e| match e {
        Event::Publication(r) => Some(&r.offset),
        _ => None,
    });
    if last != Some(fin) {
        return Err(format!(
            "the last event is not the fin {}: {:?}",
            fin.text,
            events.last()
        ));
    }
    if tally.gaps == 0 && tally.received + tally.missed != fin.n {
        return Err(format!(
            "received {} + missed {} != {} published",
            tally.received, tally.missed, fin.n
        ));
    }
    if tally.gaps == 0 && tally.missed == 0 {
        // The plain case, checked as every other history test checks it.
        let got: Vec<Received> = events
            .iter()
            .filter_map(|e| match e {
                Event::Publication(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        check_exactly_once(&got, log, 1)?;
    }
    Ok(tally)
}
