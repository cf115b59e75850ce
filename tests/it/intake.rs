//! When the fan-out falls behind Redis, nothing piles up inside Herald: each publication
//! is fanned out as the connection is read, so the backlog waits in the kernel and in
//! Redis, where Redis's own `client-output-buffer-limit` sees it. Nothing is lost
//! meanwhile. (Until issue 14 publications waited in an intake bounded in bytes,
//! `--redis-intake-max-bytes`, taken by another thread; these tests guarded that bound and
//! guard the same outcome now.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::delivery::wait_channels;
use crate::support::{secs, Client, Gateway, Redis};

/// 20,000 publications of ~8 KB of JSON numbers, ~160 MB: Redis makes them far faster than
/// the gateway checks and frames them (reading them off the socket is a copy; checking
/// the JSON is not), so without a bound they pile up in the gateway.
const PUBLICATIONS: u64 = 20_000;
const NUMBERS: usize = 4_000;
/// What the gateway may reach. Measured (debug build): 19 MB with a 1 MB intake; 88 MB
/// with redis-rs's unbounded queue before it (which also lost the connection to the late
/// subscription's unanswered SUBSCRIBE: a `gap`).
const RSS_LIMIT: u64 = 60 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_behind_redis_keeps_a_bounded_intake_and_loses_nothing() {
    // Redis never cuts Herald for its output buffer here: the backlog may wait there.
    let redis = Redis::start_with(&["--client-output-buffer-limit", "pubsub 0 0 0"]).await;
    let args = [
        // Short deadlines: the probe's PING and any reply wait behind the backlog for
        // seconds; publications still arriving must keep the connection alive (a reconnect
        // would drop what Redis holds, and the clients would get `gap`).
        "--redis-probe-interval",
        "300ms",
        "--redis-timeout",
        "1s",
        // Clients keep up; the tape is not what is under test.
        "--queue-capacity",
        "100000",
    ];
    let gw = Gateway::start(&redis.url(), &args).await;
    gw.wait_ready(secs(10)).await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let client = Client::connect(&gw.ws_url("channels=firehose")).await;
        readers.push(tokio::spawn(read_all(client)));
    }
    wait_channels(&redis, &["firehose"], secs(5)).await;

    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_rss(gw.pid(), done.clone(), max_rss.clone()));
    publish_burst(&redis).await;
    // A client subscribing elsewhere meanwhile is subscribed on Redis, and the connection
    // survives the wait: its SUBSCRIBE's reply, like the probe's, queues behind the
    // backlog (redis-rs writes a command only once it has read all there is to read,
    // so the command itself waits too: measured ~11s here, the whole backlog).
    let _late = Client::connect(&gw.ws_url("channels=elsewhere")).await;
    wait_channels(&redis, &["elsewhere", "firehose"], secs(60)).await;
    for reader in readers {
        assert_eq!(
            reader.await.expect("reader"),
            PUBLICATIONS,
            "every publication once"
        );
    }
    done.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let max_rss = max_rss.load(Ordering::SeqCst);

    let m = gw.metrics().await;
    let waited = m.value("herald_redis_lag_seconds_count", &[]);
    let total_wait = m.value("herald_redis_lag_seconds_sum", &[]);
    eprintln!(
        "intake: max RSS {} MB, {waited} publications waited {total_wait:.2}s in all",
        max_rss / (1024 * 1024)
    );
    assert_eq!(
        waited as u64, PUBLICATIONS,
        "every publication's wait observed"
    );
    assert!(total_wait > 0.0, "the waits are measured");
    assert!(
        max_rss < RSS_LIMIT,
        "gateway RSS reached {} MB",
        max_rss / (1024 * 1024)
    );
}

/// Publishes `{"seq":n,"v":[0,1,...]}` for every n, 1,000 per script run: Redis makes
/// them far faster than a test could send them. Not more per run: Redis sends nothing
/// while a script runs, and a run of 5,000 took over a second at busy times, longer than
/// the gateway's `--redis-timeout 1s` here, so its probe gave up on a connection that was
/// fine and the readers got a `gap` (seen in 2 of 4 runs one afternoon, before and
/// after issue 14's changes alike).
async fn publish_burst(redis: &Redis) {
    const SCRIPT: &str = r#"
        local v = {}
        for i = 1, tonumber(ARGV[3]) do v[i] = i % 10 end
        local numbers = table.concat(v, ",")
        for seq = tonumber(ARGV[1]), tonumber(ARGV[2]) do
            redis.call("PUBLISH", KEYS[1], '{"seq":' .. seq .. ',"v":[' .. numbers .. ']}')
        end
        return 0"#;
    // Redis holding the backlog takes longer than the support connection's patience.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(secs(60)));
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("publisher connection");
    for first in (0..PUBLICATIONS).step_by(1_000) {
        let last = (first + 1_000).min(PUBLICATIONS) - 1;
        let mut eval = redis::cmd("EVAL");
        eval.arg(SCRIPT)
            .arg(1)
            .arg("firehose")
            .arg(first)
            .arg(last)
            .arg(NUMBERS);
        let () = eval.query_async(&mut conn).await.expect("EVAL");
    }
}

/// Reads publications until PUBLICATIONS arrived, each in order once; returns the count.
/// Only the sequence number is read from each frame: a test client checking every
/// number would be slower than the gateway under test.
async fn read_all(mut client: Client) -> u64 {
    const PREFIX: &str = r#"{"op":"message","channel":"firehose","data":{"seq":"#;
    let mut next = 0;
    while next < PUBLICATIONS {
        let message = tokio::time::timeout(secs(60), client.ws.next()).await;
        let text = match message {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            other => panic!("after {next} publications: {other:?}"),
        };
        let seq = text
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split(',').next())
            .and_then(|seq| seq.parse::<u64>().ok());
        assert_eq!(
            seq,
            Some(next),
            "out of order or missing: {:.120}",
            text.as_str()
        );
        next += 1;
    }
    next
}

/// Samples the gateway's RSS every 20 ms until `done` (bounded: at most 10 minutes).
async fn sample_rss(pid: u32, done: Arc<AtomicBool>, max: Arc<AtomicU64>) {
    for _ in 0..30_000 {
        if done.load(Ordering::SeqCst) {
            return;
        }
        if let Some(rss) = crate::support::gateway::rss_bytes(pid) {
            max.fetch_max(rss, Ordering::SeqCst);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Publications arriving while Herald resubscribes after a reconnect do not stall it:
/// held back until the resubscribe ended, they filled the intake, the connection was no
/// longer read, the next SUBSCRIBE's reply never came, and the connection was lost again,
/// in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_channels_do_not_stall_the_resubscribe() {
    /// Four SUBSCRIBE batches of 512; the busy ones are spread among them.
    const CHANNELS: usize = 2_000;
    const BUSY: usize = 40;
    let redis = Redis::start().await;
    let args = crate::redis_loss::FAST_REDIS;
    let gw = Gateway::start(&redis.url(), args).await;
    gw.wait_ready(secs(10)).await;
    let names: Vec<String> = (0..CHANNELS).map(|i| format!("c{i}")).collect();
    let mut drains = Vec::new();
    for held in names.chunks(250) {
        let mut client = Client::connect(&gw.ws_url("")).await;
        for (id, request) in held.chunks(100).enumerate() {
            let request: Vec<&str> = request.iter().map(String::as_str).collect();
            client.subscribe(id as u64, &request).await;
        }
        // Read and drop: the clients are not under test.
        drains.push(tokio::spawn(async move {
            while let Some(Ok(_)) = client.ws.next().await {}
        }));
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_channels(&redis, &all, secs(10)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_busy(redis.url(), BUSY, stop.clone()));
    let before = crate::redis_loss::reconnects(&gw).await;
    assert!(redis.client_kill_pubsub().await >= 1, "herald's connection");
    crate::redis_loss::wait_reconnect(&gw, before).await;
    wait_channels(&redis, &all, secs(10)).await;
    stop.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("publisher");
    assert!(published > 0);
    for drain in drains {
        drain.abort();
    }
}

/// Publishes ~2 KB to each of the first `busy` channels, a round every 5 ms (8,000
/// publications/s with 40 channels), until `stop` (at most 60 s); returns the rounds.
/// Paced: unpaced, Redis took publications faster than a debug build of the gateway,
/// sharing two cores with the rest of the suite, fanned them out, and the resubscribe's
/// replies, queued behind the backlog, took longer than the test waits (once in a CI run
/// of the whole suite). The backlog is not what this test is about.
async fn publish_busy(url: String, busy: usize, stop: Arc<AtomicBool>) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("publisher connection");
    let payload = format!("\"{}\"", "x".repeat(2000));
    let began = std::time::Instant::now();
    let mut rounds = 0;
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(5));
    while !stop.load(Ordering::SeqCst) && began.elapsed() < secs(60) {
        pace.tick().await;
        let mut pipe = redis::pipe();
        for i in 0..busy {
            pipe.cmd("PUBLISH")
                .arg(format!("c{}", i * 50))
                .arg(&payload)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("PUBLISH round");
        rounds += 1;
    }
    rounds
}
