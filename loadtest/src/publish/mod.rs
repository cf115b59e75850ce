//! Publishers: Redis PUBLISH or FCALL herald_publish (Herald; on a Redis Cluster SPUBLISH
//! or FCALL on each channel's master) or HTTP POST (Nchan), behind
//! one enum, and the pacer that drives either at a fixed rate; and, for `api_publish`,
//! the closed loop: C connections (Herald's `POST /api/publish`, or Redis directly), each
//! sending one publication at a time as fast as the answers come.
//!
//! Every publication carries a stamp (`stamp`): send time, sequence, channel index. The
//! sequence per channel lives in `Sequences`, owned by the run, so it continues across
//! phases and a client's gap detection never resets.

pub mod closed_loop;
pub mod pace;
pub mod via_api;
mod via_cluster;
mod via_nchan;
mod via_redis;

pub use via_redis::{connect, connect_to};

use crate::cli::{Common, PeerKind, PublishVia};
use crate::cluster;
use crate::plan::channel_name;

/// The next sequence number per channel, starting at 1.
pub struct Sequences(Vec<u64>);

impl Sequences {
    pub fn new(channels: u32) -> Sequences {
        Sequences(vec![1; channels as usize])
    }

    fn take(&mut self, channel: u32) -> u64 {
        let slot = &mut self.0[channel as usize];
        *slot += 1;
        *slot - 1
    }

    /// The next number of `channel`, for a publisher that numbers its own run on it and
    /// then says how many it made with [`Sequences::skip`].
    pub fn peek(&self, channel: u32) -> u64 {
        self.0[channel as usize]
    }

    /// Marks `n` numbers of `channel` as used.
    pub fn skip(&mut self, channel: u32, n: u64) {
        self.0[channel as usize] += n;
    }
}

pub enum Publisher {
    Redis(via_redis::RedisPublisher),
    /// `--redis redis+cluster://...`: SPUBLISH (or FCALL) on the master owning each channel.
    Cluster(via_cluster::ClusterPublisher),
    Nchan(via_nchan::NchanPublisher),
}

impl Publisher {
    /// A publisher for `channels` channels of the run, named as the clients name them.
    pub async fn connect(common: &Common, channels: u32) -> Result<Publisher, String> {
        let names = (0..channels).map(|c| channel_name(&common.channel_prefix, c));
        match common.peer {
            PeerKind::Herald => {
                let names = names
                    .map(|name| format!("{}{name}", common.redis_channel_prefix))
                    .collect();
                let via = common.publish.unwrap_or(PublishVia::Publish);
                if cluster::is_cluster(&common.redis) {
                    return Ok(Publisher::Cluster(
                        via_cluster::ClusterPublisher::connect(&common.redis, names, via).await?,
                    ));
                }
                Ok(Publisher::Redis(
                    via_redis::RedisPublisher::connect(&common.redis, names, via).await?,
                ))
            }
            PeerKind::Nchan => Ok(Publisher::Nchan(via_nchan::NchanPublisher::new(
                &common.nchan_pub,
                names.collect(),
            )?)),
        }
    }

    /// Publishes once on each channel in `batch` (repeats allowed), stamped now.
    pub async fn send(&mut self, batch: &[u32], seqs: &mut Sequences) -> Result<(), String> {
        match self {
            Publisher::Redis(publisher) => publisher.send(batch, seqs).await,
            Publisher::Cluster(publisher) => publisher.send(batch, seqs).await,
            Publisher::Nchan(publisher) => publisher.send(batch, seqs).await,
        }
    }
}
