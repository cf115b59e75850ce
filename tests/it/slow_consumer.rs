//! A client that stops reading is closed with 1008 "slow consumer"; the others get every
//! publication in order meanwhile, and the gateway's memory stays bounded. A client that
//! stops only for a while is told with `lagged` how many publications it missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::delivery::wait_channels;
use crate::support::client::Frame;
use crate::support::{eventually, secs, start, Client};

/// Large enough that a few hundred fill the loopback socket buffers (several MB each way).
const PAYLOAD_BYTES: usize = 48 * 1024;
/// One publication per tick: a steady, bounded rate (~4.8 MB/s).
const TICK: Duration = Duration::from_millis(10);
/// Upper bound on publications, so the publisher stops by itself whatever happens.
const MAX_PUBLICATIONS: u64 = 3000;
const RSS_LIMIT: u64 = 200 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_are_unaffected() {
    let (redis, gw) = start(&["--write-timeout", "2s", "--queue-capacity", "64"]).await;
    let mut slow = Client::connect(&gw.ws_url("channels=firehose")).await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let client = Client::connect(&gw.ws_url("channels=firehose")).await;
        readers.push(tokio::spawn(read_all(client)));
    }
    wait_channels(&redis, &["firehose"], secs(5)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish(redis.url(), stop.clone()));

    let mut max_rss = 0;
    eventually(
        "herald_dropped_total{reason=\"slow_consumer\"} > 0",
        secs(40),
        async || {
            max_rss = max_rss.max(gw.rss_bytes());
            let m = gw.metrics().await;
            let dropped = m.value("herald_dropped_total", &[("reason", "slow_consumer")]);
            let connections = m.value("herald_connections", &[]);
            if dropped > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "dropped {dropped}, connections {connections}, max RSS {} MB",
                    max_rss / (1024 * 1024)
                ))
            }
        },
    )
    .await;
    // The server keeps the connection one more write timeout to flush the close frame:
    // reading now finds it behind whatever was already in the socket buffers.
    assert_eq!(
        slow.expect_close(secs(10)).await,
        (1008, "slow consumer".to_owned())
    );
    max_rss = max_rss.max(gw.rss_bytes());

    stop.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("publisher task");
    let mut still_open = Vec::new();
    for reader in readers {
        let (received, client) = reader.await.expect("reader task");
        assert_eq!(received, published, "a reading client missed publications");
        still_open.push(client);
    }
    // Only the slow client was closed.
    gw.wait_metric("herald_connections", 2.0, secs(5)).await;
    max_rss = max_rss.max(gw.rss_bytes());
    assert!(
        max_rss < RSS_LIMIT,
        "gateway RSS reached {} MB",
        max_rss / (1024 * 1024)
    );
}

/// A client on a slow link (4 KiB receive buffer) that stops reading while 5,000
/// publications of 1 KiB go to its channel, and is closed as a slow consumer: every
/// publication queued for it is either received or counted as dropped, by reason:
/// received + `queue_full` (told with `lagged`) + `slow_consumer` = queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publication_to_a_slow_consumer_is_received_or_counted() {
    const PUBLICATIONS: u64 = 5000;
    let (redis, gw) = start(&["--write-timeout", "2s"]).await;
    let mut slow = Client::connect_with_recv_buffer(&gw.ws_url("channels=slow"), 4096).await;
    wait_channels(&redis, &["slow"], secs(5)).await;
    publish_burst(&redis.url(), "slow", PUBLICATIONS, 1024).await;
    // Sent while the server's write to it is stuck, so the server never reads it: input
    // left unread when a socket closes makes the kernel reset the connection and discard
    // what it still held for the client.
    slow.send_json(json!({"op": "ping", "id": "unread"})).await;
    gw.wait_metric("herald_connections", 0.0, secs(30)).await;

    // Now read everything the connection still brings, to its end.
    let (mut received, mut missed, mut next) = (0u64, 0u64, 0u64);
    loop {
        let frame = match slow.next_frame(secs(10)).await {
            Frame::Json(frame) => frame,
            Frame::Close(_) | Frame::Ended(_) => break,
        };
        match frame["op"].as_str() {
            Some("message") => {
                let seq = frame["data"]["seq"].as_u64().expect("seq");
                assert!(seq >= next, "{seq} after {next}: out of order or twice");
                next = seq + 1;
                received += 1;
            }
            Some("lagged") => missed += frame["missed"].as_u64().expect("missed"),
            Some("pong") => {}
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let m = gw.metrics().await;
    let queued = m.value("herald_deliveries_total", &[]) as u64;
    let queue_full = m.value("herald_dropped_total", &[("reason", "queue_full")]) as u64;
    let slow_consumer = m.value("herald_dropped_total", &[("reason", "slow_consumer")]) as u64;
    eprintln!(
        "slow consumer: queued {queued}, received {received}, lagged {missed}, dropped \
         queue_full {queue_full} slow_consumer {slow_consumer}"
    );
    assert!(
        slow_consumer > 0,
        "the client was closed as a slow consumer"
    );
    assert_eq!(queue_full, missed, "queue_full counts what `lagged` told");
    assert_eq!(
        received + queue_full + slow_consumer,
        queued,
        "every queued publication is received or counted as dropped"
    );
}

/// Publishes `{"seq":n,"pad":...}` for n in 0..count, pipelined, as fast as Redis takes it.
async fn publish_burst(url: &str, channel: &str, count: u64, pad: usize) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("publisher connection");
    let pad = "x".repeat(pad);
    let seqs: Vec<u64> = (0..count).collect();
    for chunk in seqs.chunks(500) {
        let mut pipe = redis::pipe();
        for seq in chunk {
            pipe.cmd("PUBLISH")
                .arg(channel)
                .arg(json!({"seq": seq, "pad": pad}).to_string())
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("PUBLISH burst");
    }
}

/// More than the loopback socket buffers (several MB each way) and the queue hold.
const BURST: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_is_told_what_it_missed() {
    told_what_it_missed(&["--write-timeout", "60s", "--queue-capacity", "8"]).await;
}

/// The same with room for every frame by count but a byte budget of ~1 MB for the
/// channel (the burst is ~29 MB): the oldest go by bytes, told with `lagged` the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_keeps_no_more_bytes_than_its_budget() {
    let args = ["--write-timeout", "60s", "--queue-capacity", "4096"];
    told_what_it_missed(&[&args[..], &["--channel-max-bytes", "1000000"]].concat()).await;
}

/// A client reads nothing while BURST publications go out, then reads: what was kept, in
/// order, and `lagged` for the rest, which the metric counts too.
async fn told_what_it_missed(args: &[&str]) {
    let (redis, gw) = start(args).await;
    let mut client = Client::connect(&gw.ws_url("channels=burst")).await;
    wait_channels(&redis, &["burst"], secs(5)).await;

    // The client reads nothing while the whole burst goes out.
    let pad = "x".repeat(PAYLOAD_BYTES);
    for seq in 0..BURST {
        let payload = json!({"seq": seq, "pad": pad}).to_string();
        redis.publish("burst", payload).await;
    }
    // Every publication has been read from Redis and offered to the client.
    eventually("the burst read from Redis", secs(30), async || {
        let m = gw.metrics().await;
        let queued = m.value("herald_deliveries_total", &[]);
        let dropped = m.value("herald_dropped_total", &[("reason", "queue_full")]);
        if queued + dropped >= BURST as f64 {
            Ok(())
        } else {
            Err(format!("queued {queued}, dropped {dropped}"))
        }
    })
    .await;

    // Reading again: what was kept, in order, and `lagged` for the rest; after it the
    // client has caught up, so an end marker published now must arrive.
    let (mut received, mut missed, mut last) = (0u64, 0u64, None);
    let mut ended = false;
    while !ended {
        let frame = client.recv_json(secs(10)).await;
        match frame["op"].as_str() {
            Some("message") if frame["data"]["end"] == true => ended = true,
            Some("message") => {
                let seq = frame["data"]["seq"].as_u64().expect("seq");
                assert!(
                    last < Some(seq),
                    "{seq} after {last:?}: out of order or twice"
                );
                last = Some(seq);
                received += 1;
            }
            Some("lagged") => {
                assert_eq!(frame["channel"], "burst", "{frame}");
                // Once: a client still catching up may be told more than once, and a
                // second marker would arrive after the loop, in place of the pong below.
                if missed == 0 {
                    redis
                        .publish("burst", json!({"end": true}).to_string())
                        .await;
                }
                missed += frame["missed"].as_u64().expect("missed count");
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert!(missed > 0, "nothing reported missed");
    assert_eq!(
        received + missed,
        BURST,
        "every publication is delivered or counted as missed"
    );
    client.ping(1).await;
    let dropped = gw
        .metrics()
        .await
        .value("herald_dropped_total", &[("reason", "queue_full")]);
    assert_eq!(dropped as u64, missed, "lagged and the metric agree");
}

/// Publishes `{"seq":n,"pad":...}` every tick until `stop`, then `{"end":n}`; returns n.
async fn publish(url: String, stop: Arc<AtomicBool>) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("publisher connection");
    let pad = "x".repeat(PAYLOAD_BYTES);
    let mut tick = tokio::time::interval(TICK);
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) && seq < MAX_PUBLICATIONS {
        tick.tick().await;
        let payload = json!({"seq": seq, "pad": pad}).to_string();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("firehose")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
        seq += 1;
    }
    let _: i64 = redis::cmd("PUBLISH")
        .arg("firehose")
        .arg(json!({"end": seq}).to_string())
        .query_async(&mut conn)
        .await
        .expect("PUBLISH end");
    seq
}

/// Reads until the end marker, checking every sequence number arrives, in order, once;
/// returns the count and the client (still connected).
async fn read_all(mut client: Client) -> (u64, Client) {
    let mut next = 0;
    loop {
        let frame = client.recv_json(secs(10)).await;
        assert_eq!(frame["op"], "message", "a reading client got {frame}");
        if let Some(end) = frame["data"]["end"].as_u64() {
            assert_eq!(end, next, "end marker after {next} publications");
            return (next, client);
        }
        assert_eq!(frame["data"]["seq"], next, "out of order or missing");
        next += 1;
    }
}
