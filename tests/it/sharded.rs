//! Herald on a Redis Cluster (`redis+cluster://`): each channel SSUBSCRIBEd on the master
//! that owns its slot, one link per master, following the topology. A real cluster of 3
//! masters and 3 replicas (tests/it/support/cluster.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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
                    (
                        port,
                        names
                            .into_iter()
                            .filter(|n| n.starts_with("c:"))
                            .collect::<Vec<_>>(),
                    )
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
