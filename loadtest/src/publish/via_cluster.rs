//! SPUBLISH (or FCALL herald_publish) on a Redis Cluster: each channel to the master that
//! owns its slot, where Herald SSUBSCRIBEs it. A batch becomes one pipeline per master,
//! all in flight at once, so a batch still costs one round trip (the slowest master's),
//! as with `via_redis` on a single node.
//!
//! `FCALL herald_publish 1 <channel> <payload>` is routed the same way: the channel is
//! its key, and the function SPUBLISHes on a Cluster. Herald loads it on every master.

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::Pipeline;

use super::via_redis::failed;
use super::Sequences;
use crate::cli::PublishVia;
use crate::cluster::Cluster;
use crate::stamp::{encode, now_ns};

pub struct ClusterPublisher {
    cluster: Cluster,
    /// Redis channel name per channel index.
    names: Vec<String>,
    /// Master (index into `cluster.conns`) per channel index, computed once.
    owners: Vec<usize>,
    /// One per master, cleared and refilled for every batch.
    pipes: Vec<Pipeline>,
    via: PublishVia,
}

impl ClusterPublisher {
    pub async fn connect(
        url: &str,
        names: Vec<String>,
        via: PublishVia,
    ) -> Result<ClusterPublisher, String> {
        let cluster = Cluster::connect(url).await?;
        let owners = names.iter().map(|name| cluster.master_of(name)).collect();
        let pipes = cluster.conns.iter().map(|_| redis::pipe()).collect();
        Ok(ClusterPublisher {
            cluster,
            names,
            owners,
            pipes,
            via,
        })
    }

    pub async fn send(&mut self, batch: &[u32], seqs: &mut Sequences) -> Result<(), String> {
        let t = now_ns();
        for pipe in &mut self.pipes {
            pipe.clear();
        }
        for &channel in batch {
            let payload = encode(t, seqs.take(channel), channel);
            let name = &self.names[channel as usize];
            let pipe = &mut self.pipes[self.owners[channel as usize]];
            super::via_redis::add(pipe, self.via, "SPUBLISH", name, payload);
        }
        let sends = self
            .pipes
            .iter()
            .zip(&self.cluster.conns)
            .enumerate()
            .filter(|(_, (pipe, _))| !pipe.is_empty())
            .map(|(master, (pipe, con))| send_one(master, pipe, con.clone()));
        let mut first_error = None;
        for outcome in join_all(sends).await {
            if let Err((master, e)) = outcome {
                first_error.get_or_insert_with(|| self.describe(master, &e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn describe(&self, master: usize, e: &redis::RedisError) -> String {
        let why = failed(self.via, "SPUBLISH", e);
        let addr = self.cluster.addr(master);
        if e.redirect_node().is_some() {
            // The map is read once: a static cluster is what the benchmark measures.
            format!(
                "{why} (master {addr}: the cluster's slots moved after the publisher read them)"
            )
        } else {
            format!("{why} (master {addr})")
        }
    }
}

async fn send_one(
    master: usize,
    pipe: &Pipeline,
    mut con: MultiplexedConnection,
) -> Result<(), (usize, redis::RedisError)> {
    pipe.query_async::<()>(&mut con)
        .await
        .map_err(|e| (master, e))
}
