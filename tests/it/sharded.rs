//! Herald on a Redis Cluster (`redis+cluster://`): each channel SSUBSCRIBEd on the master
//! that owns its slot, one link per master, following the topology. A real cluster of 3
//! masters and 3 replicas (tests/it/support/cluster.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use serde_json::json;

use crate::support::cluster::Cluster;
use crate::support::{eventually, secs, Client, Gateway};

const CHANNELS: usize = 300;

fn channel(i: usize) -> String {
    format!("c:{i}")
}

/// A client on `gw` holding `names`, subscribed in requests of 50.
async fn subscriber(gw: &Gateway, names: &[String]) -> Client {
    let mut client = Client::connect(&gw.ws_url("")).await;
    for (id, batch) in names.chunks(50).enumerate() {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        client.subscribe(id as u64 + 1, &batch).await;
    }
    client
}

/// Waits until every master carries exactly the channels of `held` it owns.
async fn wait_carried(cluster: &Cluster, held: &BTreeSet<String>, timeout: Duration) {
    let mut expected: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for name in held {
        let owner = cluster.master_of(name).await;
        expected.entry(owner).or_default().push(name.clone());
    }
    eventually(
        "every master carries exactly the channels it owns",
        timeout,
        async || {
            let carried = cluster.pubsub_shardchannels().await;
            let carried: BTreeMap<u16, Vec<String>> = carried
                .into_iter()
                .map(|(port, names)| {
                    let ours: Vec<String> =
                        names.into_iter().filter(|n| held.contains(n)).collect();
                    (port, ours)
                })
                .filter(|(_, names)| !names.is_empty())
                .collect();
            (carried == expected)
                .then_some(())
                .ok_or_else(|| format!("carried {carried:?}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publication_reaches_exactly_its_subscribers_once_in_order() {
    let cluster = Cluster::start().await;
    let args = ["--max-subscriptions", "1000"];
    let one = Gateway::start(&cluster.seeds(), &args).await;
    let two = Gateway::start(&cluster.seeds(), &args).await;
    one.wait_ready(secs(20)).await;
    two.wait_ready(secs(20)).await;
    // Channels 0..200 on the first instance, 100..300 on the second: 100 on both.
    let names: Vec<String> = (0..CHANNELS).map(channel).collect();
    let mut a = subscriber(&one, &names[..200]).await;
    let mut b = subscriber(&two, &names[100..]).await;
    let held: BTreeSet<String> = names.iter().cloned().collect();
    wait_carried(&cluster, &held, secs(20)).await;
    let masters: BTreeSet<u16> =
        futures_util::future::join_all(names.iter().map(|n| cluster.master_of(n)))
            .await
            .into_iter()
            .collect();
    assert_eq!(masters.len(), 3, "the channels span every master");

    for seq in 1..=3 {
        for name in &names {
            let receivers = cluster
                .spublish(name, json!({ "seq": seq }).to_string())
                .await;
            let i: usize = name[2..].parse().unwrap();
            let expected = if (100..200).contains(&i) { 2 } else { 1 };
            assert_eq!(
                receivers, expected,
                "SPUBLISH {name}: one link per instance holding it"
            );
        }
    }
    for (client, range) in [(&mut a, 0..200), (&mut b, 100..CHANNELS)] {
        let mut next: BTreeMap<String, u64> = range.map(|i| (channel(i), 1)).collect();
        for _ in 0..next.len() * 3 {
            let frame = client.expect_op("message", secs(10)).await;
            let name = frame["channel"].as_str().unwrap().to_string();
            let seq = frame["data"]["seq"].as_u64().unwrap();
            let expected = next
                .get_mut(&name)
                .unwrap_or_else(|| panic!("not subscribed: {frame}"));
            assert_eq!(seq, *expected, "{name}: in order, once");
            *expected += 1;
        }
        assert!(next.values().all(|n| *n == 4), "every publication arrived");
    }
}

/// FCALL herald_publish through redis-rs's cluster connection, retried until it is
/// taken, as a publisher that must not lose a publication does (a failover refuses it
/// for seconds).
async fn publish_retrying(conn: &mut ClusterConnection, channel: &str, payload: &str) {
    let deadline = tokio::time::Instant::now() + secs(30);
    loop {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("herald_publish").arg(1).arg(channel).arg(payload);
        match cmd.query_async::<redis::Value>(conn).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("FCALL herald_publish {channel} refused for 30s: {e}"),
        }
    }
}

/// Reads frames until every channel in `next` has received up to `last`; returns the
/// channels that got a `gap`. A publication out of order, twice, or on a channel not
/// held fails the test.
async fn read_until(
    client: &mut Client,
    next: &mut BTreeMap<String, u64>,
    last: u64,
) -> BTreeSet<String> {
    let mut gaps = BTreeSet::new();
    while next.values().any(|n| *n <= last) {
        let frame = client.recv_json(secs(20)).await;
        let name = frame["channel"].as_str().unwrap_or_default().to_string();
        match frame["op"].as_str() {
            Some("gap") => {
                gaps.insert(name);
            }
            Some("message") => {
                let seq = frame["data"]["seq"].as_u64().unwrap();
                let expected = next
                    .get_mut(&name)
                    .unwrap_or_else(|| panic!("not held: {frame}"));
                if name.starts_with("h:") {
                    assert_eq!(seq, *expected, "{name}: every publication once, in order");
                } else {
                    assert!(seq >= *expected, "{name}: in order, once: {frame}");
                }
                *expected = seq + 1;
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    gaps
}

/// SIGKILL a master while history channels on every master are published to: its replica
/// is promoted, its channels deliver again, the client stays connected, and the history
/// channels lose nothing (plain channels of the dead master get a `gap` at most; the
/// other masters' channels notice nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_nothing_on_history_channels() {
    let mut cluster = Cluster::start().await;
    let mut args = vec!["--history", "h:*=1000/5m"];
    args.extend_from_slice(crate::redis_loss::FAST_REDIS);
    let gw = Gateway::start(&cluster.seeds(), &args).await;
    gw.wait_ready(secs(20)).await;
    let names: Vec<String> = (0..20)
        .flat_map(|i| [format!("h:{i}"), format!("p:{i}")])
        .collect();
    let mut client = subscriber(&gw, &names).await;
    let held: BTreeSet<String> = names.iter().cloned().collect();
    wait_carried(&cluster, &held, secs(20)).await;

    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let mut conn = redis::cluster::ClusterClient::new(seeds)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let publish_round = async |conn: &mut ClusterConnection, seq: u64| {
        for name in &names {
            let payload = json!({ "seq": seq }).to_string();
            if name.starts_with("h:") {
                publish_retrying(conn, name, &payload).await;
            } else {
                let mut cmd = redis::cmd("SPUBLISH");
                cmd.arg(name).arg(&payload);
                // A plain publication to a master being failed over is lost: that is
                // what `gap` is for.
                let _ = cmd.query_async::<redis::Value>(conn).await;
            }
        }
    };
    let mut next: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 1)).collect();
    for seq in 1..=5 {
        publish_round(&mut conn, seq).await;
    }
    assert!(read_until(&mut client, &mut next, 5).await.is_empty());

    // Its replica has everything so far (replication is asynchronous: what a master took
    // but had not passed on is lost with it, in any Redis Cluster).
    let victim_port = cluster.master_of("h:0").await;
    let _: i64 = cluster
        .query(victim_port, redis::cmd("WAIT").arg(1).arg(2000))
        .await;
    let owned_by_victim: BTreeSet<String> = {
        let mut owned = BTreeSet::new();
        for name in &names {
            if cluster.master_of(name).await == victim_port {
                owned.insert(name.clone());
            }
        }
        owned
    };
    let killed = cluster.kill9_master_of("h:0").await;
    assert_eq!(killed, victim_port);
    // Published while the failover runs; the retries wait for the promotion.
    for seq in 6..=10 {
        publish_round(&mut conn, seq).await;
    }
    cluster.wait_failover().await;
    gw.wait_readyz(200, secs(30)).await;
    for seq in 11..=12 {
        publish_round(&mut conn, seq).await;
    }
    let gaps = read_until(&mut client, &mut next, 12).await;
    let unexpected: Vec<&String> = gaps
        .iter()
        .filter(|name| name.starts_with("h:") || !owned_by_victim.contains(*name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "gaps only on the dead master's plain channels; also got {unexpected:?}"
    );
    let logs = gw.logs().join("\n");
    assert!(
        logs.contains("redis cluster master lost"),
        "the log names the lost master"
    );
}

/// Move the slot of subscribed channels to another master while publications flow: the
/// channels follow (Redis drops them on the old owner with an unasked `sunsubscribe`),
/// history channels lose nothing, plain ones get a `gap` at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_follow_a_migrated_slot_without_loss_on_history_channels() {
    let cluster = Cluster::start().await;
    let mut args = vec!["--history", "h:*=1000/5m"];
    args.extend_from_slice(crate::redis_loss::FAST_REDIS);
    let gw = Gateway::start(&cluster.seeds(), &args).await;
    gw.wait_ready(secs(20)).await;
    // Two channels of one slot, and one elsewhere that must notice nothing. (Channel
    // names cannot hold a hash tag: find a plain name in the history channel's slot.)
    let slot = herald::redis::topology::slot("h:moving");
    let plain = (0..)
        .map(|i| format!("p:{i}"))
        .find(|name| herald::redis::topology::slot(name) == slot)
        .unwrap();
    let other = (0..)
        .map(|i| format!("h:{i}"))
        .find(|name| herald::redis::topology::slot(name) != slot)
        .unwrap();
    let names: Vec<String> = vec!["h:moving".into(), plain.clone(), other];
    let mut client = subscriber(&gw, &names).await;
    let held: BTreeSet<String> = names.iter().cloned().collect();
    wait_carried(&cluster, &held, secs(20)).await;

    assert_eq!(cluster.keyslot("h:moving").await, slot);
    let from = cluster.master_of_slot(slot).await;
    let to = *cluster
        .masters()
        .await
        .keys()
        .find(|&&p| p != from)
        .unwrap();
    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let client_cluster = redis::cluster::ClusterClient::new(seeds).unwrap();
    let mut conn = client_cluster.get_async_connection().await.unwrap();
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn({
        let names = names.clone();
        async move {
            let mut seq = 0;
            while !*stop.borrow_and_update() || seq < 5 {
                seq += 1;
                for name in &names {
                    let payload = json!({ "seq": seq }).to_string();
                    if name.starts_with("h:") {
                        publish_retrying(&mut conn, name, &payload).await;
                    } else {
                        let mut cmd = redis::cmd("SPUBLISH");
                        cmd.arg(name).arg(&payload);
                        let _ = cmd.query_async::<redis::Value>(&mut conn).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seq
        }
    });
    cluster.migrate_slot(slot, to).await;
    // The channels are carried by their new owner only.
    wait_carried(&cluster, &held, secs(20)).await;
    stop_tx.send(true).unwrap();
    let last = publisher.await.unwrap();
    let mut next: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 1)).collect();
    let gaps = read_until(&mut client, &mut next, last).await;
    assert!(
        gaps.iter().all(|name| *name == plain),
        "only the moved plain channel may get a gap: {gaps:?}"
    );
    assert_eq!(cluster.master_of("h:moving").await, to);
}

/// A resharding onto a master that joined the Cluster: Herald links it, loads its
/// function library there (Redis copies no functions to a new node), and the channels of
/// the moved slot follow; history publications made there reach the clients in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_gets_the_library_and_the_channels_that_move_to_it() {
    let mut cluster = Cluster::start().await;
    let mut args = vec!["--history", "h:*=1000/5m"];
    args.extend_from_slice(crate::redis_loss::FAST_REDIS);
    let gw = Gateway::start(&cluster.seeds(), &args).await;
    gw.wait_ready(secs(20)).await;
    let names: Vec<String> = vec!["h:moving".into()];
    let mut client = subscriber(&gw, &names).await;
    let held: BTreeSet<String> = names.iter().cloned().collect();
    wait_carried(&cluster, &held, secs(20)).await;
    let publish = async |cluster: &Cluster, seq: u64| {
        let payload = json!({ "seq": seq }).to_string();
        let offset: String = cluster
            .fcall("herald_publish", "h:moving", &[payload.as_str()])
            .await;
        offset
    };
    publish(&cluster, 1).await;

    let added = cluster.add_master().await;
    cluster
        .migrate_slot(herald::redis::topology::slot("h:moving"), added)
        .await;
    wait_carried(&cluster, &held, secs(20)).await;
    assert_eq!(cluster.master_of("h:moving").await, added);
    // The function runs on the new master: Herald loaded it there.
    publish(&cluster, 2).await;
    let mut next: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 1)).collect();
    let gaps = read_until(&mut client, &mut next, 2).await;
    assert!(gaps.is_empty(), "nothing lost: {gaps:?}");
    assert_eq!(
        crate::redis_loss::reconnects(&gw).await,
        0.0,
        "no master lacked the library: nothing had to start over"
    );
}

/// The server API on a Cluster: a publication is routed to its channel's master (SPUBLISH,
/// or FCALL on a history channel) and reaches every instance's subscribers; counts across
/// instances and a user's disconnect work as on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_works_the_same_on_a_cluster() {
    use crate::access::{token, SECRET};
    use crate::api::{api, channel_subscribers, list_channels, publish, publish_kept, KEY};

    let cluster = Cluster::start().await;
    let args = [
        "--api-key",
        KEY,
        "--jwt-secret",
        SECRET,
        "--history",
        "h:*=100/5m",
    ];
    let gws = [
        Gateway::start(&cluster.seeds(), &args).await,
        Gateway::start(&cluster.seeds(), &args).await,
    ];
    for gw in &gws {
        gw.wait_ready(secs(20)).await;
    }
    let alice = token("alice", &["news", "h:chat"], 300);
    let bob = token("bob", &["news"], 300);
    let query = |t: &str, channels: &str| format!("token={t}&channels={channels}");
    let mut alices = Client::connect(&gws[0].ws_url(&query(&alice, "news,h:chat"))).await;
    let mut bobs = Client::connect(&gws[1].ws_url(&query(&bob, "news"))).await;
    let held: BTreeSet<String> = ["news", "h:chat"].map(String::from).into();
    wait_carried(&cluster, &held, secs(20)).await;
    assert_ne!(
        cluster.master_of("news").await,
        cluster.master_of("h:chat").await,
        "two masters are involved"
    );

    assert_eq!(publish(&gws[1], "news", json!({"n": 1})).await, json!({}));
    for client in [&mut alices, &mut bobs] {
        assert_eq!(
            client.expect_message("news", secs(5)).await["data"],
            json!({"n": 1})
        );
    }
    let offset = publish_kept(&gws[1], "h:chat", json!("hi")).await;
    let got = alices.expect_message("h:chat", secs(5)).await;
    assert_eq!(got["offset"], offset.text.as_str(), "{got}");

    let expected: BTreeMap<String, u64> =
        [("news".to_string(), 2), ("h:chat".to_string(), 1)].into();
    eventually("cluster-wide counts", secs(15), async || {
        let listed = list_channels(&gws[0], true).await;
        (listed == expected).then_some(()).ok_or(listed)
    })
    .await;
    assert_eq!(channel_subscribers(&gws[1], "news", true).await, 2);
    let chat = api(&gws[0], "GET", "/api/channel?name=h:chat", None).await;
    assert_eq!(chat["history"]["size"], 1, "{chat}");

    api(
        &gws[1],
        "POST",
        "/api/disconnect",
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(
        alices.expect_close(secs(5)).await,
        (4003, "disconnected".to_owned())
    );
    publish(&gws[0], "news", json!({"n": 2})).await;
    assert_eq!(
        bobs.expect_message("news", secs(5)).await["data"],
        json!({"n": 2})
    );
}

/// An ACL that refuses one shard channel (and the control channel) refuses that channel
/// to its subscribers and nothing else: the link stays, the other channels deliver, and
/// the instance is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_acl_refuses_cuts_off_no_one_else() {
    let cluster = Cluster::start().await;
    for port in cluster.ports() {
        let _: () = cluster
            .query(
                port,
                redis::cmd("ACL").arg(&crate::redis_loss::LIMITED_ACL[..]),
            )
            .await;
    }
    let url = cluster.seeds().replace(
        "redis+cluster://",
        &format!("redis+cluster://{}", crate::redis_loss::LIMITED_USER),
    );
    let gw = Gateway::start(&url, crate::redis_loss::FAST_REDIS).await;
    gw.wait_ready(secs(20)).await;
    let mut bystander = subscriber(&gw, &["allowed:1".to_string()]).await;
    let mut client = Client::connect(&gw.ws_url("")).await;
    crate::redis_loss::subscribe_one_refused(&mut client).await;
    let held: BTreeSet<String> = ["allowed:1", "allowed:2"].map(String::from).into();
    wait_carried(&cluster, &held, secs(20)).await;
    cluster.spublish("allowed:1", "still served").await;
    assert_eq!(
        bystander.expect_message("allowed:1", secs(5)).await["data"],
        "still served"
    );
    cluster.spublish("allowed:2", "yours too").await;
    assert_eq!(
        client.expect_message("allowed:2", secs(5)).await["data"],
        "yours too"
    );
    assert_eq!(
        gw.get("/readyz").await.0,
        200,
        "ready without the control channel"
    );
    let logs = gw.logs().join("\n");
    assert!(
        !logs.contains("redis cluster master lost"),
        "no link was replaced:\n{logs}"
    );
}
