//! Losing Redis, loudly or silently, never loses a client or a subscription: Herald
//! reconnects, resubscribes the union its clients hold, and publications flow again.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::delivery::wait_channels;
use crate::support::client::sorted_names;
use crate::support::eventually::expect_eq;
use crate::support::{eventually, secs, Client, Gateway, Proxy, Redis};

/// Short timings so an outage is noticed and healed within a test's patience.
pub const FAST_REDIS: &[&str] = &[
    "--redis-probe-interval",
    "300ms",
    "--redis-timeout",
    "1s",
    "--redis-backoff-base",
    "20ms",
    "--redis-backoff-max",
    "200ms",
];

pub async fn reconnects(gw: &Gateway) -> f64 {
    gw.metrics()
        .await
        .value("herald_redis_reconnects_total", &[])
}

/// Waits until the subscriber connection was re-established since `before` was read.
pub async fn wait_reconnect(gw: &Gateway, before: f64) {
    eventually(
        "herald_redis_reconnects_total to increase",
        secs(10),
        async || {
            let now = reconnects(gw).await;
            if now > before {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_death_is_probed_and_healed() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let gw = Gateway::start(&proxy.url(), FAST_REDIS).await;
    gw.wait_ready(secs(10)).await;
    let mut client = Client::connect(&gw.ws_url("channels=live")).await;
    wait_channels(&redis, &["live"], secs(5)).await;
    redis.publish("live", "before").await;
    assert_eq!(
        client.expect_message("live", secs(5)).await["data"],
        "before"
    );
    let opened_before = proxy.opened();

    // Nothing arrives and nothing errs: only the probe can tell. New connections hang too,
    // so the outage lasts long enough to be seen on /readyz.
    proxy.freeze_new(true);
    proxy.freeze();
    // Probe interval 300ms, and an unanswered probe counts as lost after one interval.
    gw.wait_readyz(503, secs(3)).await;

    proxy.freeze_new(false);
    gw.wait_ready(secs(10)).await;
    assert!(
        proxy.opened() > opened_before,
        "herald must open a new connection through the proxy"
    );
    assert!(reconnects(&gw).await >= 1.0);
    // Anything published while Herald was cut off is lost on a channel without history,
    // and the client is told so, once.
    client.expect_gaps(&["live"], secs(5)).await;
    // Readiness comes after resubscribing, so the new connection carries `live` now.
    redis.publish("live", "after").await;
    assert_eq!(
        client.expect_message("live", secs(5)).await["data"],
        "after"
    );
}

/// Kills Redis with SIGKILL under 50 clients holding 601 channels (more than one
/// resubscribe batch of 512), then restarts it on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_clients_and_resubscribes_all() {
    const CLIENTS: usize = 50;
    const PER_CLIENT: usize = 12;
    let mut redis = Redis::start().await;
    let gw = Gateway::start(&redis.url(), FAST_REDIS).await;
    gw.wait_ready(secs(10)).await;

    let mut clients = Vec::new();
    let mut union = BTreeSet::from(["all".to_owned()]);
    for i in 0..CLIENTS {
        let own: Vec<String> = (0..PER_CLIENT)
            .map(|j| format!("ch-{}", i * PER_CLIENT + j))
            .collect();
        union.extend(own.iter().cloned());
        let query = format!("channels=all,{}", own.join(","));
        clients.push((Client::connect(&gw.ws_url(&query)).await, own));
    }
    let union_names: Vec<&str> = union.iter().map(String::as_str).collect();
    wait_channels(&redis, &union_names, secs(10)).await;

    redis.kill9();
    gw.wait_readyz(503, secs(5)).await;
    // A subscribe during the outage is accepted: the hub, not Redis, is the record.
    let mut late = Client::connect(&gw.ws_url("")).await;
    assert_eq!(late.subscribe(1, &["late"]).await, ["late"]);

    redis.restart().await;
    gw.wait_ready(secs(10)).await;
    let mut expected = union_names.clone();
    expected.push("late");
    wait_channels(&redis, &expected, secs(10)).await;
    let m = gw.metrics().await;
    assert_eq!(m.value("herald_connections", &[]), (CLIENTS + 1) as f64);

    // Every client still connected (a close frame would fail expect_message), told once
    // per channel that it may have missed publications, and served.
    assert_eq!(redis.publish("all", "everyone").await, 1);
    for (client, own) in &mut clients {
        let mut held: Vec<&str> = own.iter().map(String::as_str).collect();
        held.push("all");
        client.expect_gaps(&held, secs(5)).await;
        assert_eq!(
            client.expect_message("all", secs(5)).await["data"],
            "everyone"
        );
        for channel in own.iter() {
            redis
                .publish(channel, json!({"to": channel}).to_string())
                .await;
            let frame = client.expect_message(channel, secs(5)).await;
            assert_eq!(frame["data"]["to"], channel.as_str());
        }
    }
    redis.publish("late", "you too").await;
    // Subscribed during the outage: what was published before Redis came back is lost.
    late.expect_gaps(&["late"], secs(5)).await;
    assert_eq!(
        late.expect_message("late", secs(5)).await["data"],
        "you too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_reconnects_and_resubscribes() {
    let redis = Redis::start().await;
    let gw = Gateway::start(&redis.url(), FAST_REDIS).await;
    gw.wait_ready(secs(10)).await;
    let mut one = Client::connect(&gw.ws_url("channels=k1,k2")).await;
    let mut two = Client::connect(&gw.ws_url("channels=k2,k3")).await;
    wait_channels(&redis, &["k1", "k2", "k3"], secs(5)).await;
    let before = reconnects(&gw).await;

    assert!(redis.client_kill_pubsub().await >= 1, "herald's connection");
    wait_reconnect(&gw, before).await;
    gw.wait_ready(secs(5)).await;
    wait_channels(&redis, &["k1", "k2", "k3"], secs(5)).await;

    one.expect_gaps(&["k1", "k2"], secs(5)).await;
    two.expect_gaps(&["k2", "k3"], secs(5)).await;
    redis.publish("k1", "1").await;
    redis.publish("k2", "2").await;
    redis.publish("k3", "3").await;
    assert_eq!(one.expect_message("k1", secs(5)).await["data"], 1);
    assert_eq!(one.expect_message("k2", secs(5)).await["data"], 2);
    assert_eq!(two.expect_message("k2", secs(5)).await["data"], 2);
    assert_eq!(two.expect_message("k3", secs(5)).await["data"], 3);
}

/// Redis cuts a subscriber whose output buffer passes `client-output-buffer-limit`: here
/// one publication larger than a small hard limit. That publication is lost to everyone
/// (Redis dropped it with the connection); Herald must notice, reconnect and resubscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_buffer_limit_disconnect_is_healed() {
    let redis = Redis::start().await;
    let gw = Gateway::start(&redis.url(), FAST_REDIS).await;
    gw.wait_ready(secs(10)).await;
    let mut client = Client::connect(&gw.ws_url("channels=big")).await;
    wait_channels(&redis, &["big"], secs(5)).await;
    let before = reconnects(&gw).await;

    cut_subscribers_past_64kb(&redis).await;
    redis.publish("big", vec![b'x'; 1 << 20]).await;
    wait_reconnect(&gw, before).await;
    gw.wait_ready(secs(5)).await;
    wait_channels(&redis, &["big"], secs(5)).await;
    redis.publish("big", "after").await;
    // The big publication is lost, and the client is told.
    client.expect_gaps(&["big"], secs(5)).await;
    assert_eq!(client.expect_message("big", secs(5)).await["data"], "after");
}

/// Random subscribe/unsubscribe from several clients at once, with the subscriber
/// connection killed midway: once settled, Redis carries exactly the union clients hold.
/// Requests go in pipelined bursts, so a channel's first-in and last-out often both land
/// between two reconcile passes, the race a reconciler must settle by live counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_matches_the_union_after_churn() {
    const CLIENTS: u64 = 6;
    const ROUNDS: u64 = 20;
    const BURST: u64 = 20;
    let redis = Redis::start().await;
    // Bursts exceed the default per-connection rate limit, which is not under test here.
    let args = [
        FAST_REDIS,
        &["--rate-limit", "10000", "--rate-burst", "10000"],
    ]
    .concat();
    let gw = Gateway::start(&redis.url(), &args).await;
    gw.wait_ready(secs(10)).await;
    let names: Vec<String> = (0..24).map(|i| format!("churn-{i}")).collect();

    let (halfway_tx, halfway_rx) = tokio::sync::oneshot::channel();
    let mut halfway_tx = Some(halfway_tx);
    let mut tasks = Vec::new();
    for seed in 0..CLIENTS {
        let mut client = Client::connect(&gw.ws_url("")).await;
        let names = names.clone();
        let mut halfway = if seed == 0 { halfway_tx.take() } else { None };
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut held = Vec::new();
            for round in 0..ROUNDS {
                for i in 0..BURST {
                    let picked: Vec<&str> = (0..rng.random_range(1..=3))
                        .map(|_| names[rng.random_range(0..names.len())].as_str())
                        .collect();
                    let op = if rng.random_bool(0.5) {
                        "subscribe"
                    } else {
                        "unsubscribe"
                    };
                    let id = round * BURST + i;
                    client
                        .send_json(json!({"op": op, "id": id, "channels": picked}))
                        .await;
                }
                for i in 0..BURST {
                    // The kill midway sends `gap`s for the channels held then.
                    let reply = loop {
                        let frame = client.recv_json(secs(5)).await;
                        if frame["op"] != "gap" {
                            break frame;
                        }
                    };
                    assert_eq!(
                        (&reply["op"], &reply["id"]),
                        (&json!("ok"), &json!(round * BURST + i)),
                        "{reply}"
                    );
                    held = crate::support::client::sorted_names(&reply["channels"]);
                }
                if round == ROUNDS / 2 {
                    if let Some(tx) = halfway.take() {
                        let _ = tx.send(());
                    }
                }
            }
            (client, held)
        }));
    }

    halfway_rx.await.expect("client 0 reached halfway");
    assert!(redis.client_kill_pubsub().await >= 1, "herald's connection");
    let mut union = BTreeSet::new();
    let mut pairs = 0;
    let mut clients = Vec::new();
    for task in tasks {
        let (client, held) = task.await.expect("churn task");
        pairs += held.len();
        union.extend(held);
        clients.push(client);
    }

    gw.wait_ready(secs(10)).await;
    let union: Vec<&str> = union.iter().map(String::as_str).collect();
    wait_channels(&redis, &union, secs(10)).await;
    let expected = (pairs as f64, union.len() as f64);
    eventually(
        "(herald_subscriptions, herald_channels) to match the clients",
        secs(5),
        async || {
            let m = gw.metrics().await;
            let seen = (
                m.value("herald_subscriptions", &[]),
                m.value("herald_channels", &[]),
            );
            expect_eq(seen, &expected)
        },
    )
    .await;
    assert!(reconnects(&gw).await >= 1.0, "the kill forced a reconnect");
}

/// The `ceiling` field of each "redis subscriber connection down" line so far.
fn down_ceilings(gw: &Gateway) -> Vec<String> {
    gw.logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["fields"]["message"] == "redis subscriber connection down")
        .map(|v| {
            v["fields"]["ceiling"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Redis kills the subscriber again and again under the same load (each big publication
/// passes its output-buffer limit): a connection that never proved healthy (one probe
/// interval) does not reset the backoff, so the waits grow instead of hammering Redis
/// with a reconnect and a full resubscribe every few milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_again_and_again_backs_off() {
    let redis = Redis::start().await;
    let gw = Gateway::start(&redis.url(), FAST_REDIS).await;
    gw.wait_ready(secs(10)).await;
    let _client = Client::connect(&gw.ws_url("channels=big")).await;
    wait_channels(&redis, &["big"], secs(5)).await;
    cut_subscribers_past_64kb(&redis).await;
    // Bounded: at most 10 s of big publications, ~every 10ms.
    let flood = async {
        for _ in 0..1000 {
            redis.publish("big", vec![b'x'; 1 << 20]).await;
            if down_ceilings(&gw).len() >= 6 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    flood.await;
    let ceilings = down_ceilings(&gw);
    assert!(
        ceilings.len() >= 6,
        "only {} disconnects: {ceilings:?}",
        ceilings.len()
    );
    // FAST_REDIS: base 20ms, cap 200ms; each kill comes long before a 300ms probe.
    assert_eq!(ceilings[0], "20ms", "{ceilings:?}");
    assert_eq!(
        ceilings[5], "200ms",
        "the ceiling doubles per kill: {ceilings:?}"
    );
}

/// Wrong credentials are not a passing failure: one clear line, and a long wait between
/// attempts rather than an AUTH failure every few hundred milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_back_off_long_and_say_so_once() {
    let redis = Redis::start().await;
    redis
        .raw(&["CONFIG", "SET", "requirepass", "right-password"])
        .await;
    let url = redis.url().replace("redis://", "redis://:wrong-password@");
    let gw = Gateway::start(&url, FAST_REDIS).await;
    let said = |gw: &Gateway| {
        gw.logs()
            .iter()
            .filter(|line| line.contains("redis refused Herald's credentials"))
            .count()
    };
    eventually(
        "the refused-credentials line",
        secs(10),
        async || match said(&gw) {
            0 => Err("not yet"),
            _ => Ok(()),
        },
    )
    .await;
    // With the ordinary backoff (here at most 200ms) a second and third attempt would
    // come within this second; a refused one waits at least 15s.
    tokio::time::sleep(secs(1)).await;
    assert_eq!(said(&gw), 1, "one line per outage");
    assert_eq!(gw.get("/readyz").await.0, 503);
    assert_eq!(
        acl_log_count(&redis).await,
        1,
        "failed AUTH attempts within a second"
    );
}

/// The `count` of the first ACL LOG entry (failed AUTHs are folded into one).
async fn acl_log_count(redis: &Redis) -> i64 {
    let log = redis.raw(&["ACL", "LOG"]).await;
    let redis::Value::Array(entries) = log else {
        return 0;
    };
    let Some(redis::Value::Array(fields)) = entries.first() else {
        return 0;
    };
    fields
        .chunks(2)
        .find(|kv| matches!(&kv[0], redis::Value::BulkString(k) if k == b"count"))
        .and_then(|kv| match &kv[1] {
            redis::Value::Int(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

/// A Redis ACL that refuses one channel (`NOPERM`) refuses it to its subscribers only:
/// they get `error` `forbidden` and the channel is dropped from their set; the connection
/// stays up and every other channel, theirs included, keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_acl_refuses_cuts_off_no_one_else() {
    let redis = Redis::start().await;
    redis.raw(&[&["ACL"][..], &LIMITED_ACL].concat()).await;
    let url = redis
        .url()
        .replace("redis://", &format!("redis://{LIMITED_USER}"));
    let gw = Gateway::start(&url, FAST_REDIS).await;
    gw.wait_ready(secs(10)).await;
    let mut bystander = Client::connect(&gw.ws_url("channels=allowed:1")).await;
    wait_channels(&redis, &["allowed:1"], secs(5)).await;
    let before = reconnects(&gw).await;

    let mut client = Client::connect(&gw.ws_url("")).await;
    subscribe_one_refused(&mut client).await;

    wait_channels(&redis, &["allowed:1", "allowed:2"], secs(5)).await;
    redis.publish("allowed:1", "still served").await;
    assert_eq!(
        bystander.expect_message("allowed:1", secs(5)).await["data"],
        "still served"
    );
    redis.publish("allowed:2", "yours too").await;
    assert_eq!(
        client.expect_message("allowed:2", secs(5)).await["data"],
        "yours too"
    );
    assert_eq!(
        reconnects(&gw).await,
        before,
        "the connection was never dropped"
    );
    assert_eq!(gw.get("/readyz").await.0, 200);
}

/// An ACL user who may use every command and key but only the `allowed:*` channels.
pub const LIMITED_ACL: [&str; 8] = [
    "SETUSER",
    "limited",
    "on",
    ">limited-pass",
    "~*",
    "+@all",
    "resetchannels",
    "&allowed:*",
];

/// Its credentials, as the user part of a Redis URL.
pub const LIMITED_USER: &str = "limited:limited-pass@";

/// Subscribes `forbidden:1` and `allowed:2`, which an ACL limited to `&allowed:*` lets
/// through only in part: ends holding `allowed:2`, told `forbidden:1` was refused.
///
/// Usually the `ok` goes out before Redis refuses, and the refusal follows without an id;
/// when Redis was quicker than the rest of the subscribe, the subscribe itself is refused,
/// all or nothing, and the allowed channel is asked for alone.
pub async fn subscribe_one_refused(client: &mut Client) {
    let reply = client
        .request(json!({"op": "subscribe", "id": 1, "channels": ["forbidden:1", "allowed:2"]}))
        .await;
    let (error, says_why) = if reply["op"] == "ok" {
        assert_eq!(
            sorted_names(&reply["channels"]),
            ["allowed:2", "forbidden:1"]
        );
        (client.expect_op("error", secs(10)).await, true)
    } else {
        client.subscribe(2, &["allowed:2"]).await;
        (reply, false)
    };
    assert_eq!(error["code"], "forbidden", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("forbidden:1"), "{error}");
    if says_why {
        assert!(message.to_lowercase().contains("noperm"), "{error}");
    }
    assert_eq!(client.unsubscribe(3, &[]).await, ["allowed:2"], "dropped");
}

/// Redis closes a subscriber connection whose output buffer passes 64 KB: one larger
/// publication then cuts Herald off.
async fn cut_subscribers_past_64kb(redis: &Redis) {
    redis
        .raw(&[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 64kb 0 0",
        ])
        .await;
}
