//! A Redis Cluster as the generator sees it (`--redis redis+cluster://h:p,h:p,...`): the
//! masters and their slots read once from `CLUSTER SHARDS`, one multiplexed connection per
//! master, and each channel's master.
//!
//! Herald's own topology module does the reading (the seed URL form, `CLUSTER SHARDS`,
//! the slot function), so the generator and the server agree on where a channel lives.
//! The benchmark's cluster is static (no failover, no resharding while it is measured):
//! the map is read once, and a MOVED reply is an error that says the cluster changed.
//!
//! Not redis-rs's cluster client: its pipelines must stay in one slot (1.8.1's
//! `route_for_pipeline` refuses "crossed slots"), so a batch over many channels would go
//! out as one routed request per publication; here a batch is one pipeline per master.

use std::time::Duration;

use herald::redis::topology::{self, Topology};
use redis::aio::MultiplexedConnection;

use crate::publish::connect_to;

/// Deadline for each seed to answer `CLUSTER SHARDS` (connect and reply).
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `--redis` names a Redis Cluster.
pub fn is_cluster(url: &str) -> bool {
    topology::is_cluster_url(url)
}

/// The cluster's masters, connected.
pub struct Cluster {
    topology: Topology,
    /// One per master, in `Topology::masters` order.
    pub conns: Vec<MultiplexedConnection>,
}

impl Cluster {
    /// Reads the slot map from the seeds of `url` and connects to every master.
    pub async fn connect(url: &str) -> Result<Cluster, String> {
        let seeds = topology::seeds(url).map_err(|e| format!("redis url {url:?}: {e}"))?;
        let topology = topology::fetch(&seeds, FETCH_TIMEOUT)
            .await
            .map_err(|e| format!("Redis Cluster at {url}: {e}"))?;
        let mut conns = Vec::with_capacity(topology.masters().len());
        for master in topology.masters() {
            conns.push(connect_to(master.connection_info(&seeds[0]), &master.addr()).await?);
        }
        Ok(Cluster { topology, conns })
    }

    /// The index (into `conns`) of the master owning `name`'s slot. The topology was
    /// complete when read, so every slot has one.
    pub fn master_of(&self, name: &str) -> usize {
        self.topology
            .owner(topology::slot(name))
            .expect("fetch returns only topologies that cover every slot")
    }

    /// `host:port` of master `index`, for messages.
    pub fn addr(&self, index: usize) -> String {
        self.topology.masters()[index].addr()
    }

    /// `names` by owning master: one list per entry of `conns`, in the order given.
    pub fn split<'a>(&self, names: &'a [String]) -> Vec<Vec<&'a String>> {
        let mut by_master = vec![Vec::new(); self.conns.len()];
        for name in names {
            by_master[self.master_of(name)].push(name);
        }
        by_master
    }
}
