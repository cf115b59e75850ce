//! Every contract family is exposed, moves with what happens, and never carries a
//! channel name in a label.

use crate::delivery::wait_channels;
use crate::support::eventually::expect_eq;
use crate::support::metrics::Scrape;
use crate::support::{eventually, secs, start, Client};

const FAMILIES: &[(&str, &str)] = &[
    ("herald_connections", "gauge"),
    ("herald_connections_total", "counter"),
    ("herald_subscriptions", "gauge"),
    ("herald_channels", "gauge"),
    ("herald_redis_messages_total", "counter"),
    ("herald_deliveries_total", "counter"),
    ("herald_dropped_total", "counter"),
    ("herald_redis_connected", "gauge"),
    ("herald_redis_reconnects_total", "counter"),
    ("herald_fanout_seconds", "histogram"),
    ("herald_redis_lag_seconds", "histogram"),
];

/// Channel names distinctive enough that finding one in a label cannot be a coincidence.
const CHANNELS: [&str; 2] = ["metric-chan-alpha", "metric-chan-beta"];

fn assert_families(m: &Scrape) {
    for (family, kind) in FAMILIES {
        assert_eq!(
            m.types.get(*family).map(String::as_str),
            Some(*kind),
            "family {family} ({kind}) missing in\n{}",
            m.text
        );
    }
    for histogram in ["herald_fanout_seconds", "herald_redis_lag_seconds"] {
        for sample in ["_bucket", "_sum", "_count"] {
            assert!(m.has(&format!("{histogram}{sample}")), "{}", m.text);
        }
    }
    assert!(m.has("herald_dropped_total"), "{}", m.text);
}

fn assert_no_channel_labels(m: &Scrape) {
    for sample in m.samples.iter().filter(|s| s.name.starts_with("herald_")) {
        for (key, value) in &sample.labels {
            assert!(
                !CHANNELS
                    .iter()
                    .any(|c| value.contains(c) || key.contains(c)),
                "channel name in a label: {sample:?}"
            );
        }
    }
}

/// The counters and gauges this test follows, in one tuple for `eventually`.
fn snapshot(m: &Scrape) -> [f64; 7] {
    [
        m.value("herald_connections", &[]),
        m.value("herald_connections_total", &[]),
        m.value("herald_subscriptions", &[]),
        m.value("herald_channels", &[]),
        m.value("herald_redis_messages_total", &[]),
        m.value("herald_deliveries_total", &[]),
        m.value("herald_fanout_seconds_count", &[]),
    ]
}

async fn wait_snapshot(gw: &crate::support::Gateway, what: &str, expected: [f64; 7]) -> Scrape {
    eventually(what, secs(5), async || {
        let m = gw.metrics().await;
        expect_eq(snapshot(&m), &expected).map(|_| m.clone()).map_err(|seen| {
            format!("[connections, connections_total, subscriptions, channels, redis_messages, deliveries, fanout_count] = {seen:?}")
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_and_move() {
    let (redis, gw) = start(&[]).await;
    let m = gw.metrics().await;
    assert_families(&m);
    assert_eq!(snapshot(&m), [0.0; 7], "{}", m.text);
    assert_eq!(m.value("herald_redis_connected", &[]), 1.0);
    assert_eq!(m.value("herald_redis_reconnects_total", &[]), 0.0);
    for reason in ["queue_full", "slow_consumer"] {
        assert_eq!(m.value("herald_dropped_total", &[("reason", reason)]), 0.0);
    }

    let [alpha, beta] = CHANNELS;
    let mut one = Client::connect(&gw.ws_url(&format!("channels={alpha}"))).await;
    let mut two = Client::connect(&gw.ws_url(&format!("channels={alpha}"))).await;
    let mut three = Client::connect(&gw.ws_url(&format!("channels={alpha},{beta}"))).await;
    wait_channels(&redis, &CHANNELS, secs(5)).await;
    wait_snapshot(
        &gw,
        "3 clients on 2 channels",
        [3.0, 3.0, 4.0, 2.0, 0.0, 0.0, 0.0],
    )
    .await;

    // One publication to three subscribers: one message from Redis, three deliveries.
    redis.publish(alpha, "1").await;
    for client in [&mut one, &mut two, &mut three] {
        client.expect_message(alpha, secs(5)).await;
    }
    wait_snapshot(
        &gw,
        "after one publication",
        [3.0, 3.0, 4.0, 2.0, 1.0, 3.0, 1.0],
    )
    .await;
    redis.publish(beta, "2").await;
    three.expect_message(beta, secs(5)).await;
    wait_snapshot(&gw, "after a second", [3.0, 3.0, 4.0, 2.0, 2.0, 4.0, 2.0]).await;

    three.close().await;
    let m = wait_snapshot(
        &gw,
        "after a client left",
        [2.0, 3.0, 2.0, 1.0, 2.0, 4.0, 2.0],
    )
    .await;
    assert_families(&m);
    assert_no_channel_labels(&m);
    let buckets = m.value("herald_fanout_seconds_bucket", &[("le", "+Inf")]);
    assert_eq!(buckets, 2.0, "every fan-out lands in the +Inf bucket");
    drop((one, two));
}
