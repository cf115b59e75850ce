//! Where a subscriber stands: the `ok` to a subscribe (and the `welcome` for channels in
//! the upgrade query) carries `offsets`, per history channel joined, the offset its
//! delivery starts after. Without it a client whose connection dropped before the first
//! publication arrived had nothing to resume from, and lost what was published meanwhile
//! without being told.

use serde_json::{json, Value};

use crate::history::{next_publication, offset_of, start_with_history, Offset};
use crate::support::{Client, Redis};

/// The offset `reply` gives for `channel`; panics naming the reply when there is none.
fn offset_in(reply: &Value, channel: &str) -> Offset {
    let text = reply["offsets"][channel].as_str();
    Offset::parse(text.unwrap_or_else(|| panic!("no offset for {channel:?} in {reply}")))
}

async fn publish(redis: &Redis, channel: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Offset> {
    let mut offsets = Vec::new();
    for seq in seqs {
        let reply = redis
            .herald_publish(channel, json!({ "seq": seq }).to_string())
            .await;
        offsets.push(offset_of(reply));
    }
    offsets
}

/// A channel never published to: the `ok` names `<epoch>:0`, and a resume from it after a
/// drop gets every publication made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_before_the_first_publication_loses_nothing() {
    let (redis, gw) = start_with_history("h:*=100/5m").await;
    let mut first = Client::connect(&gw.ws_url("")).await;
    let reply = first
        .request(json!({"op": "subscribe", "id": 1, "channels": ["h:new", "plain"]}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    let start = offset_in(&reply, "h:new");
    assert_eq!(start.n, 0, "nothing was published yet: {reply}");
    assert!(
        reply["offsets"].get("plain").is_none(),
        "a channel without history has no offset: {reply}"
    );
    first.close().await;

    let published = publish(&redis, "h:new", 1..=3).await;
    assert_eq!(
        published[0].epoch, start.epoch,
        "the epoch minted at subscribe"
    );

    let mut again = Client::connect(&gw.ws_url("")).await;
    let reply = again
        .subscribe_since(2, &["h:new"], json!({"h:new": start.text}))
        .await;
    assert_eq!(reply["recovered"], json!({"h:new": true}), "{reply}");
    assert_eq!(reply["offsets"], json!({"h:new": start.text}), "{reply}");
    for offset in &published {
        assert_eq!(&next_publication(&mut again, "h:new").await.offset, offset);
    }
}

/// Mid-stream, the offset is the last publication before the live stream: in the
/// `welcome` for the upgrade query's channels, in the `ok` for a later subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_the_offset_is_the_last_publication_before_the_live_stream() {
    let (redis, gw) = start_with_history("h:*=100/5m").await;
    let before = publish(&redis, "h:a", 1..=5).await;
    publish(&redis, "h:b", 1..=2).await;

    let mut client = Client::connect(&gw.ws_url("channels=h:a")).await;
    let welcomed = offset_in(&client.welcome, "h:a");
    assert_eq!(welcomed.text, before[4].text, "{}", client.welcome);
    let reply = client
        .request(json!({"op": "subscribe", "id": 1, "channels": ["h:b"]}))
        .await;
    assert_eq!(offset_in(&reply, "h:b").n, 2, "{reply}");
    assert!(
        reply["offsets"].get("h:a").is_none(),
        "only channels it joined: {reply}"
    );

    let next = publish(&redis, "h:a", 6..=6).await;
    let got = next_publication(&mut client, "h:a").await;
    assert_eq!((got.offset.n, got.seq), (welcomed.n + 1, 6));
    assert_eq!(got.offset, next[0]);
}

/// A resume history cannot cover answers `recovered:false` and, in `offsets`, the new
/// starting point, from which the next resume works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resume_names_the_new_starting_point() {
    let (redis, gw) = start_with_history("h:*=100/5m").await;
    let published = publish(&redis, "h:c", 1..=4).await;
    let mut client = Client::connect(&gw.ws_url("")).await;
    let foreign = format!("1{}:2", published[0].epoch);
    let reply = client
        .subscribe_since(1, &["h:c"], json!({"h:c": foreign}))
        .await;
    assert_eq!(reply["recovered"], json!({"h:c": false}), "{reply}");
    let start = offset_in(&reply, "h:c");
    assert_eq!(start, published[3], "{reply}");
    client.close().await;

    let missed = publish(&redis, "h:c", 5..=6).await;
    let mut again = Client::connect(&gw.ws_url("")).await;
    let reply = again
        .subscribe_since(2, &["h:c"], json!({"h:c": start.text}))
        .await;
    assert_eq!(reply["recovered"], json!({"h:c": true}), "{reply}");
    for offset in &missed {
        assert_eq!(&next_publication(&mut again, "h:c").await.offset, offset);
    }
}
