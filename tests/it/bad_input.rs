//! Bad requests get an `error` with their code and id, and the connection keeps working;
//! an oversized frame closes with 1009; bad HTTP gets plain HTTP refusals.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::delivery::wait_channels;
use crate::support::client::refused_status;
use crate::support::{secs, start, Client};

/// Sends `text`, expects `error` with `code` and `id` (`Value::Null` for none), then
/// proves the connection still answers.
async fn refused(client: &mut Client, text: &str, code: &str, id: Value) {
    client.send_text(text).await;
    let reply = client.recv_json(secs(5)).await;
    assert_eq!(
        (&reply["op"], &reply["code"], &reply["id"]),
        (&json!("error"), &json!(code), &id),
        "request {text:?} got {reply}"
    );
    assert!(
        reply["message"].is_string(),
        "error without a message: {reply}"
    );
    client.ping(9000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_bad_request() {
    let (_redis, gw) = start(&[]).await;
    let mut client = Client::connect(&gw.ws_url("")).await;
    let cases = [
        ("not json", Value::Null),
        ("[1,2]", Value::Null),
        ("\"subscribe\"", Value::Null),
        (r#"{"op":"dance","id":1}"#, json!(1)),
        (r#"{"id":2}"#, json!(2)),
        (r#"{"op":7,"id":3}"#, json!(3)),
        (r#"{"op":"subscribe","id":4}"#, json!(4)),
        (
            r#"{"op":"subscribe","id":"s5","channels":"news"}"#,
            json!("s5"),
        ),
        (
            r#"{"op":"subscribe","id":6,"channels":["news",7]}"#,
            json!(6),
        ),
        (
            r#"{"op":"unsubscribe","id":7,"channels":{"news":true}}"#,
            json!(7),
        ),
    ];
    for (text, id) in cases {
        refused(&mut client, text, "bad_request", id).await;
    }

    client
        .send(Message::Binary(br#"{"op":"ping"}"#.to_vec().into()))
        .await;
    let reply = client.expect_op("error", secs(5)).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    client.ping(1).await;
    // Nothing of that subscribed anything.
    assert_eq!(client.subscribe(10, &[]).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channel_names_are_refused_all_or_nothing() {
    let (redis, gw) = start(&[]).await;
    let mut client = Client::connect(&gw.ws_url("")).await;
    let too_long = "x".repeat(256);
    for (id, name) in [
        (1, ""),
        (2, too_long.as_str()),
        (3, "a b"),
        (4, "a*"),
        (5, "é"),
    ] {
        let text = json!({"op": "subscribe", "id": id, "channels": [name]}).to_string();
        refused(&mut client, &text, "bad_channel", json!(id)).await;
    }
    // 255 bytes of the alphabet is the longest good name.
    let longest = format!("AZaz09_-:.@/={}", "y".repeat(242));
    assert_eq!(
        client.subscribe(6, &[longest.as_str()]).await,
        std::slice::from_ref(&longest)
    );
    assert_eq!(
        client.unsubscribe(7, &[longest.as_str()]).await,
        Vec::<String>::new()
    );

    // One bad name refuses the whole request: `good` is not subscribed.
    let text = r#"{"op":"subscribe","id":8,"channels":["good","bad name"]}"#;
    refused(&mut client, text, "bad_channel", json!(8)).await;
    assert_eq!(client.subscribe(9, &["marker"]).await, ["marker"]);
    // And receives nothing on it, even while another client makes Redis carry it.
    let mut other = Client::connect(&gw.ws_url("channels=good")).await;
    wait_channels(&redis, &["good", "marker"], secs(5)).await;
    redis.publish("good", "not for the first").await;
    assert_eq!(
        other.expect_message("good", secs(5)).await["data"],
        "not for the first"
    );
    redis.publish("marker", "m").await;
    assert_eq!(client.expect_message("marker", secs(5)).await["data"], "m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_is_all_or_nothing() {
    let (_redis, gw) = start(&["--max-subscriptions", "3"]).await;
    let mut client = Client::connect(&gw.ws_url("")).await;
    assert_eq!(client.subscribe(1, &["a", "b"]).await, ["a", "b"]);
    let text = r#"{"op":"subscribe","id":"many","channels":["c","d"]}"#;
    refused(&mut client, text, "too_many_subscriptions", json!("many")).await;
    // Neither c nor d was taken; a held name does not count twice.
    assert_eq!(client.subscribe(2, &["a", "c"]).await, ["a", "b", "c"]);
    let text = r#"{"op":"subscribe","id":3,"channels":["d"]}"#;
    refused(&mut client, text, "too_many_subscriptions", json!(3)).await;
    let m = gw.metrics().await;
    assert_eq!(m.value("herald_subscriptions", &[]), 3.0, "{}", m.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_1009_and_leaks_nothing() {
    let (redis, gw) = start(&["--max-frame-size", "1024"]).await;
    let mut stays = Client::connect(&gw.ws_url("channels=shared,mine")).await;
    let mut big = Client::connect(&gw.ws_url("channels=shared,theirs")).await;
    wait_channels(&redis, &["mine", "shared", "theirs"], secs(5)).await;

    // Within the limit: fine.
    let pad = "p".repeat(900);
    let reply = big
        .request(json!({"op": "ping", "id": 1, "pad": pad}))
        .await;
    assert_eq!(reply["op"], "pong", "{reply}");
    let pad = "p".repeat(2000);
    big.send_json(json!({"op": "ping", "id": 2, "pad": pad}))
        .await;
    assert_eq!(big.expect_close(secs(5)).await.0, 1009);

    // Only what the remaining client holds is left, in the hub and on Redis.
    wait_channels(&redis, &["mine", "shared"], secs(5)).await;
    gw.wait_metric("herald_subscriptions", 2.0, secs(5)).await;
    gw.wait_metric("herald_connections", 1.0, secs(5)).await;
    stays.ping(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_and_health() {
    let (_redis, gw) = start(&[]).await;
    assert_eq!(
        refused_status(&gw.ws_url("channels=ok,bad%20name")).await,
        400
    );
    assert_eq!(refused_status(&gw.ws_url("channels=a*")).await, 400);
    let too_long = format!("channels={}", "x".repeat(256));
    assert_eq!(refused_status(&gw.ws_url(&too_long)).await, 400);
    assert_eq!(gw.get("/ws").await.0, 426);
    assert_eq!(gw.get("/nope").await.0, 404);
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
    // None of the refused requests became a connection.
    let m = gw.metrics().await;
    assert_eq!(m.value("herald_connections_total", &[]), 0.0, "{}", m.text);
}
