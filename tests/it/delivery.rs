//! Publications reach exactly the subscribers of their channel, once, in order; Redis
//! carries a channel exactly while some client holds it.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::{eventually, secs, start, Client, Gateway, Redis};

/// Waits until Redis lists exactly `expected` as subscribed channels; on timeout shows
/// what was missing and what was extra (the lists can be hundreds long).
pub async fn wait_channels(redis: &Redis, expected: &[&str], timeout: std::time::Duration) {
    let expected: BTreeSet<String> = expected.iter().map(|c| c.to_string()).collect();
    let what = format!("PUBSUB CHANNELS to be these {} channels", expected.len());
    eventually(&what, timeout, async || {
        let seen: BTreeSet<String> = redis.pubsub_channels().await.into_iter().collect();
        if seen == expected {
            return Ok(());
        }
        let first_20 =
            |set: BTreeSet<&String>| set.into_iter().take(20).cloned().collect::<Vec<_>>();
        Err(format!(
            "{} channels; missing (first 20): {:?}; extra (first 20): {:?}",
            seen.len(),
            first_20(expected.difference(&seen).collect()),
            first_20(seen.difference(&expected).collect()),
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_by_query_and_by_op() {
    let (redis, gw) = start(&[]).await;
    let mut by_query = Client::connect(&gw.ws_url("channels=news,sport")).await;
    assert_eq!(by_query.welcome_channels(), ["news", "sport"]);
    assert!(
        by_query.welcome["session"].is_string(),
        "{}",
        by_query.welcome
    );
    assert!(
        by_query.welcome["heartbeat"].is_u64(),
        "{}",
        by_query.welcome
    );

    let mut by_op = Client::connect(&gw.ws_url("")).await;
    assert_eq!(by_op.welcome_channels(), Vec::<String>::new());
    // `ok` echoes the id (number or string) and lists the full set, not just the request.
    let reply = by_op
        .request(json!({"op": "subscribe", "id": 1, "channels": ["news"]}))
        .await;
    assert_eq!(reply, json!({"op": "ok", "id": 1, "channels": ["news"]}));
    let reply = by_op
        .request(json!({"op": "subscribe", "id": "two", "channels": ["weather"]}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert_eq!(
        crate::support::client::sorted_names(&reply["channels"]),
        ["news", "weather"]
    );

    wait_channels(&redis, &["news", "sport", "weather"], secs(5)).await;
    assert_eq!(
        redis.publish("news", "1").await,
        1,
        "herald's one connection"
    );
    redis.publish("sport", "2").await;
    redis.publish("weather", "3").await;
    let frame = by_query.expect_message("news", secs(5)).await;
    assert_eq!(
        frame,
        json!({"op": "message", "channel": "news", "data": 1})
    );
    assert_eq!(by_query.expect_message("sport", secs(5)).await["data"], 2);
    assert_eq!(by_op.expect_message("news", secs(5)).await["data"], 1);
    assert_eq!(by_op.expect_message("weather", secs(5)).await["data"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_reaches_its_subscribers_and_no_one_else() {
    let (redis, gw) = start(&[]).await;
    let mut alpha1 = Client::connect(&gw.ws_url("channels=alpha")).await;
    let mut alpha2 = Client::connect(&gw.ws_url("channels=alpha")).await;
    let mut beta = Client::connect(&gw.ws_url("channels=beta")).await;
    wait_channels(&redis, &["alpha", "beta"], secs(5)).await;

    redis.publish("alpha", r#"{"n":1}"#).await;
    for client in [&mut alpha1, &mut alpha2] {
        assert_eq!(
            client.expect_message("alpha", secs(5)).await["data"]["n"],
            1
        );
    }
    // Had beta received alpha's publication, it would come before this later marker.
    redis.publish("beta", "marker").await;
    assert_eq!(beta.expect_message("beta", secs(5)).await["data"], "marker");
    // And the alpha clients got nothing of beta's, nor a second copy of alpha's.
    redis.publish("alpha", "marker").await;
    for client in [&mut alpha1, &mut alpha2] {
        assert_eq!(
            client.expect_message("alpha", secs(5)).await["data"],
            "marker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_per_channel() {
    const COUNT: u64 = 500;
    let (redis, gw) = start(&[]).await;
    let mut both = Client::connect(&gw.ws_url("channels=seq-a,seq-b")).await;
    let mut only_a = Client::connect(&gw.ws_url("channels=seq-a")).await;
    wait_channels(&redis, &["seq-a", "seq-b"], secs(5)).await;

    for seq in 0..COUNT {
        let channel = if seq % 3 == 0 { "seq-b" } else { "seq-a" };
        redis
            .publish(channel, json!({"seq": seq}).to_string())
            .await;
    }
    let mut last = std::collections::HashMap::<String, i64>::new();
    for _ in 0..COUNT {
        let frame = both.expect_op("message", secs(10)).await;
        let channel = frame["channel"].as_str().unwrap().to_owned();
        let seq = frame["data"]["seq"].as_i64().unwrap();
        let previous = last.insert(channel.clone(), seq).unwrap_or(-1);
        assert!(seq > previous, "{channel}: seq {seq} after {previous}");
    }
    let expected_a = (0..COUNT).filter(|s| s % 3 != 0);
    for seq in expected_a {
        let frame = only_a.expect_message("seq-a", secs(10)).await;
        assert_eq!(frame["data"]["seq"], seq, "seq-a out of order or missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_subscribe_delivers_once() {
    let (redis, gw) = start(&[]).await;
    let mut client = Client::connect(&gw.ws_url("channels=dup,dup")).await;
    assert_eq!(client.welcome_channels(), ["dup"]);
    assert_eq!(client.subscribe(1, &["dup", "dup"]).await, ["dup"]);
    assert_eq!(client.subscribe(2, &["dup"]).await, ["dup"]);
    wait_channels(&redis, &["dup"], secs(5)).await;

    redis.publish("dup", "1").await;
    redis.publish("dup", "2").await;
    // A second copy of 1 would come between them.
    assert_eq!(client.expect_message("dup", secs(5)).await["data"], 1);
    assert_eq!(client.expect_message("dup", secs(5)).await["data"], 2);
    let m = gw.metrics().await;
    assert_eq!(m.value("herald_subscriptions", &[]), 1.0, "{}", m.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let (redis, gw) = start(&[]).await;
    let mut leaver = Client::connect(&gw.ws_url("channels=a,b")).await;
    let mut stayer = Client::connect(&gw.ws_url("channels=a")).await;
    wait_channels(&redis, &["a", "b"], secs(5)).await;

    // Unknown names are fine; the reply is the full remaining set.
    assert_eq!(leaver.unsubscribe(1, &["a", "never-held"]).await, ["b"]);
    redis.publish("a", "after").await;
    redis.publish("b", "marker").await;
    // Had the leaver still received `a`, "after" would come before the marker.
    assert_eq!(leaver.expect_message("b", secs(5)).await["data"], "marker");
    // One client leaving does not take the channel from the other.
    assert_eq!(stayer.expect_message("a", secs(5)).await["data"], "after");
    assert_eq!(redis.pubsub_channels().await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_a_channel_exactly_while_some_client_does() {
    let (redis, gw) = start(&[]).await;
    let mut one = Client::connect(&gw.ws_url("")).await;
    let mut two = Client::connect(&gw.ws_url("")).await;
    one.subscribe(1, &["x"]).await;
    two.subscribe(1, &["x", "y"]).await;
    wait_channels(&redis, &["x", "y"], secs(5)).await;

    // x is still held by `one`: only y may go.
    two.unsubscribe(2, &["x"]).await;
    two.unsubscribe(3, &["y"]).await;
    wait_channels(&redis, &["x"], secs(5)).await;
    assert_eq!(redis.publish("x", "still").await, 1);
    assert_eq!(one.expect_message("x", secs(5)).await["data"], "still");

    // The last holder leaving by disconnecting releases the channel too.
    one.close().await;
    wait_channels(&redis, &[], secs(5)).await;
    let _three = Client::connect(&gw.ws_url("channels=x")).await;
    wait_channels(&redis, &["x"], secs(5)).await;
    drop(two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_prefix_is_added_on_redis() {
    let redis = Redis::start().await;
    let gw = Gateway::start(&redis.url(), &["--channel-prefix", "app:"]).await;
    gw.wait_ready(secs(10)).await;
    let mut client = Client::connect(&gw.ws_url("channels=news")).await;
    wait_channels(&redis, &["app:news"], secs(5)).await;

    assert_eq!(redis.publish("news", "unprefixed").await, 0);
    redis.publish("app:news", "prefixed").await;
    // The client sees its own name, and only the prefixed publication.
    let frame = client.expect_message("news", secs(5)).await;
    assert_eq!(frame["data"], "prefixed");
}
