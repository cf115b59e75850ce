//! Herald's cluster topology against a real Redis Cluster: the slot function, the topology
//! fetched through the seed URL, sharded pub/sub on each channel's owner, a failover and a
//! slot migration (and the `sunsubscribe` push it sends).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald::redis::topology::{self, Master, Topology};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::Instant;

use crate::support::cluster::{Cluster, Node};
use crate::support::secs;

/// Starts a cluster and reads its topology through the seed URL, as Herald will.
async fn start() -> (Cluster, Vec<ConnectionInfo>, Topology) {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    eprintln!("cluster of 6 settled in {:?}", started.elapsed());
    let seeds = topology::seeds(&cluster.seeds()).expect("the harness's seed URL");
    let topology = topology::fetch(&seeds, secs(5)).await.expect("a topology");
    (cluster, seeds, topology)
}

/// A RESP3 connection to `master` whose pushes arrive on the receiver.
async fn subscriber(
    master: &Master,
    seed: &ConnectionInfo,
) -> (MultiplexedConnection, UnboundedReceiver<PushInfo>) {
    let info = master.connection_info(seed);
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3)).expect("client");
    let (tx, rx) = unbounded_channel();
    // As Herald's subscriber connection (redis/io.rs): no response deadline of its own.
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_push_sender(tx);
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", master.addr()));
    (conn, rx)
}

/// One SSUBSCRIBE per channel, pipelined: redis-rs pairs each with its confirmation.
async fn ssubscribe(conn: &mut MultiplexedConnection, channels: &[&str]) {
    let mut pipe = redis::pipe();
    for channel in channels {
        pipe.cmd("SSUBSCRIBE").arg(*channel).ignore();
    }
    let () = pipe
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("SSUBSCRIBE {channels:?}: {e}"));
}

/// The next push that is not a subscription confirmation, within `timeout`.
async fn next_push(rx: &mut UnboundedReceiver<PushInfo>, timeout: Duration) -> Option<PushInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let push = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if push.kind != PushKind::SSubscribe {
            return Some(push);
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => panic!("not a bulk string: {other:?}"),
    }
}

#[tokio::test]
async fn each_channel_is_carried_by_the_master_the_topology_names() {
    let (cluster, seeds, topology) = start().await;

    // The topology names the three masters the nodes report, covering every slot.
    assert_eq!(topology.incomplete(), None);
    let masters: BTreeMap<u16, String> = topology
        .masters()
        .iter()
        .map(|m| (m.port.expect("a plaintext port"), m.id.clone()))
        .collect();
    assert_eq!(masters, cluster.masters().await);

    let names: Vec<String> = (0..300).map(|i| format!("herald:room-{i}")).collect();
    let channels: Vec<&str> = names.iter().map(String::as_str).collect();
    for channel in &channels {
        assert_eq!(
            topology::slot(channel),
            cluster.keyslot(channel).await,
            "slot of {channel}"
        );
    }

    // A RESP3 connection per master, each channel subscribed on its owner.
    let groups = topology::group(&topology, channels.iter().copied());
    assert!(groups.unowned.is_empty());
    assert_eq!(
        groups.masters.len(),
        3,
        "300 channels land on all 3 masters"
    );
    let mut subscribers = Vec::new();
    for (&index, slots) in &groups.masters {
        let master = &topology.masters()[index];
        let (mut conn, rx) = subscriber(master, &seeds[0]).await;
        let mine: Vec<&str> = slots.values().flatten().copied().collect();
        ssubscribe(&mut conn, &mine).await;
        subscribers.push((master.port.unwrap(), mine, conn, rx));
    }
    let carried = cluster.pubsub_shardchannels().await;
    for (port, mine, _, _) in &subscribers {
        let mut mine = mine.clone();
        mine.sort();
        assert_eq!(carried[port], mine, "PUBSUB SHARDCHANNELS on {port}");
    }

    // Published where the topology says (a wrong owner answers MOVED, and `query` panics),
    // then once more through the harness's MOVED-following path.
    for channel in &channels {
        let owner = topology.master_of(channel).unwrap().port.unwrap();
        let mut spublish = redis::cmd("SPUBLISH");
        spublish.arg(*channel).arg("direct");
        let received: i64 = cluster.query(owner, &spublish).await;
        assert_eq!(received, 1, "{channel} on {owner}");
        assert_eq!(cluster.spublish(channel, "routed").await, 1, "{channel}");
    }

    // And from a function, as Herald's history publish will (its SPUBLISH is slot-checked
    // like a key: the channel is the function's key).
    cluster
        .function_load(
            "#!lua name=it\nredis.register_function('it_spublish', \
             function(keys, args) return redis.call('SPUBLISH', keys[1], args[1]) end)",
        )
        .await;
    for channel in &channels {
        let received: i64 = cluster.fcall("it_spublish", channel, &["fcall"]).await;
        assert_eq!(received, 1, "{channel}");
    }

    for (port, mine, _conn, rx) in &mut subscribers {
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for _ in 0..mine.len() * 3 {
            let push = next_push(rx, secs(10))
                .await
                .unwrap_or_else(|| panic!("master {port} went quiet; so far {got:?}"));
            assert_eq!(push.kind, PushKind::SMessage, "{push:?}");
            got.entry(text(&push.data[0]))
                .or_default()
                .push(text(&push.data[1]));
        }
        let expected: BTreeMap<String, Vec<String>> = mine
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    vec!["direct".into(), "routed".into(), "fcall".into()],
                )
            })
            .collect();
        assert_eq!(got, expected, "what master {port} delivered");
        assert!(next_push(rx, Duration::from_millis(200)).await.is_none());
    }
}

#[tokio::test]
async fn after_a_master_dies_the_topology_names_its_promoted_replica() {
    let (mut cluster, seeds, before) = start().await;
    let channel = "herald:failover";
    let old = before.master_of(channel).unwrap().clone();
    let replicas: Vec<String> = cluster
        .query(
            old.port.unwrap(),
            redis::cmd("CLUSTER").arg("REPLICAS").arg(&old.id),
        )
        .await;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    let replica_id = replicas[0].split_whitespace().next().unwrap().to_string();

    let killed = cluster.kill9_master_of(channel).await;
    assert_eq!(Some(killed), old.port);
    let took = cluster.wait_failover().await;
    eprintln!("failover: replica promoted and cluster_state:ok {took:?} after SIGKILL");

    // The dead node first in the seed list, as a Herald started before the crash has it.
    let mut seeds = seeds;
    seeds.sort_by_key(|s| s.addr().to_string() != format!("127.0.0.1:{killed}"));
    let after = topology::fetch(&seeds, secs(5)).await.expect("a topology");
    assert_eq!(after.incomplete(), None);
    let promoted = after.master_of(channel).unwrap();
    assert_eq!(
        promoted.id, replica_id,
        "the old master's replica took over"
    );
    assert_eq!(promoted.slots, old.slots);
    assert!(after.masters().iter().all(|m| m.port != Some(killed)));

    let (mut conn, mut rx) = subscriber(promoted, &seeds[1]).await;
    ssubscribe(&mut conn, &[channel]).await;
    assert_eq!(cluster.spublish(channel, "after").await, 1);
    let push = next_push(&mut rx, secs(10)).await.expect("a message");
    assert_eq!(
        (push.kind, text(&push.data[1])),
        (PushKind::SMessage, "after".into())
    );
}

#[tokio::test]
async fn a_migrated_slot_unsubscribes_its_channels_on_the_old_owner() {
    let (cluster, seeds, before) = start().await;
    let channel = "herald:moving";
    let slot = topology::slot(channel);
    let old = before.master_of(channel).unwrap().clone();
    let old_port = old.port.unwrap();
    let new_port = before
        .masters()
        .iter()
        .filter_map(|m| m.port)
        .find(|&p| p != old_port)
        .unwrap();
    // A key in the slot, so MIGRATE has something to move.
    let () = cluster
        .routed(redis::cmd("SET").arg(channel).arg("kept"))
        .await;

    let (mut conn, mut rx) = subscriber(&old, &seeds[0]).await;
    ssubscribe(&mut conn, &[channel]).await;
    assert_eq!(
        cluster.pubsub_shardchannels().await[&old_port],
        vec![channel]
    );

    // Publications flow while the slot moves.
    let moved = AtomicBool::new(false);
    let (_, published) = tokio::join!(
        async {
            cluster.migrate_slot(slot, new_port).await;
            moved.store(true, Ordering::SeqCst);
        },
        async {
            let mut published = 0;
            while !moved.load(Ordering::SeqCst) {
                cluster.spublish(channel, format!("{published}")).await;
                published += 1;
            }
            published
        }
    );
    eprintln!("{published} SPUBLISH while slot {slot} moved");

    let carried = cluster.pubsub_shardchannels().await;
    assert!(
        !carried[&old_port].contains(&channel.to_string()),
        "{carried:?}"
    );
    // Redis tells the subscriber it lost the channel, after the messages it delivered.
    let mut seen: Vec<u64> = Vec::new();
    let unsubscribed = loop {
        let push = next_push(&mut rx, secs(10))
            .await
            .unwrap_or_else(|| panic!("no sunsubscribe after messages {seen:?}"));
        match push.kind {
            PushKind::SMessage => seen.push(text(&push.data[1]).parse().unwrap()),
            _ => break push,
        }
    };
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );
    eprintln!(
        "the old owner delivered {} of {published} (last {:?}), then pushed {unsubscribed:?}",
        seen.len(),
        seen.last()
    );
    assert_eq!(unsubscribed.kind, PushKind::SUnsubscribe);
    assert_eq!(
        unsubscribed.data,
        vec![Value::BulkString(channel.into()), Value::Int(0)]
    );

    // The connection stays usable (no in-flight request took the push as its reply), and
    // subscribing there again is refused with MOVED to the new owner.
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let again: redis::RedisResult<()> = redis::cmd("SSUBSCRIBE")
        .arg(channel)
        .query_async(&mut conn)
        .await;
    let refused = again.expect_err("SSUBSCRIBE on the old owner");
    eprintln!("SSUBSCRIBE on the old owner: {refused}");
    assert_eq!(
        refused.redirect_node(),
        Some((format!("127.0.0.1:{new_port}").as_str(), slot))
    );

    let after = topology::fetch(&seeds, secs(5)).await.expect("a topology");
    assert_eq!(after.master_of(channel).unwrap().port, Some(new_port));
    let value: String = cluster
        .query(new_port, redis::cmd("GET").arg(channel))
        .await;
    assert_eq!(value, "kept");
}

#[tokio::test]
async fn a_node_that_owns_no_slot_gives_no_topology() {
    let lone = Node::lone().await;
    let seeds = topology::seeds(&format!("redis+cluster://127.0.0.1:{}", lone.port())).unwrap();
    let err = topology::fetch(&seeds, secs(5)).await.unwrap_err();
    assert_eq!(
        err.tried,
        vec![(
            format!("127.0.0.1:{}", lone.port()),
            "no master owns slots 0-16383".to_string()
        )]
    );
}

/// redis-rs 1.8.1 treats a `sunsubscribe` push as the reply to a subscription command, so
/// an unsolicited one (slot migration) answers whatever request is in flight on that
/// connection, and every later reply shifts by one. Herald must not trust a reply on a
/// subscriber connection that may have lost a slot: treat the `sunsubscribe` push as
/// "reconnect this master". This test pins the behaviour; when it fails, redis-rs changed.
#[tokio::test]
async fn redis_rs_pairs_an_unsolicited_sunsubscribe_with_the_request_in_flight() {
    let (cluster, seeds, before) = start().await;
    let channel = "herald:moving";
    let slot = topology::slot(channel);
    let old = before.master_of(channel).unwrap().clone();
    let new_port = before
        .masters()
        .iter()
        .filter_map(|m| m.port)
        .find(|&p| p != old.port.unwrap())
        .unwrap();
    let (mut conn, mut rx) = subscriber(&old, &seeds[0]).await;
    ssubscribe(&mut conn, &[channel]).await;

    // A request that stays in flight through the migration: BLPOP on an empty key the
    // old owner keeps.
    let key = (0..)
        .map(|i| format!("blocker-{i}"))
        .find(|k| before.master_of(k).unwrap().id == old.id && topology::slot(k) != slot)
        .unwrap();
    let mut blocking = conn.clone();
    let blpop = tokio::spawn(async move {
        let started = Instant::now();
        let reply: redis::RedisResult<Value> = redis::cmd("BLPOP")
            .arg(&key)
            .arg(3)
            .query_async(&mut blocking)
            .await;
        (started.elapsed(), reply)
    });
    let deadline = Instant::now() + secs(2);
    loop {
        let info: String = cluster
            .query(old.port.unwrap(), redis::cmd("INFO").arg("clients"))
            .await;
        if info.contains("blocked_clients:1") {
            break;
        }
        assert!(Instant::now() < deadline, "BLPOP never blocked: {info}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.migrate_slot(slot, new_port).await;

    let (took, reply) = blpop.await.unwrap();
    eprintln!("BLPOP in flight during the migration answered after {took:?}: {reply:?}");
    assert!(took < secs(3), "BLPOP waited its timeout: {took:?}");
    assert_eq!(
        reply.unwrap(),
        Value::Push {
            kind: PushKind::SUnsubscribe,
            data: vec![Value::BulkString(channel.into()), Value::Int(0)]
        }
    );
    // The push went to the push sender as well.
    let push = next_push(&mut rx, secs(5)).await.expect("the push");
    assert_eq!(push.kind, PushKind::SUnsubscribe);
    // BLPOP's own reply (nil, at its timeout) now answers the next request.
    let ping: Value = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(ping, Value::Nil, "PING got BLPOP's reply");
}
