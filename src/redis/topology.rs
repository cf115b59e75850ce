//! Where each shard channel lives in a Redis Cluster: slot -> master, read from
//! `CLUSTER SHARDS`, for a subscriber connection per master (SSUBSCRIBE must reach the
//! master that owns the channel's slot).
//!
//! Herald owns this rather than redis-rs's cluster client: in 1.8.1 that client re-sends
//! all of a node's shard channels as one SSUBSCRIBE (CROSSSLOT once they span two slots,
//! the error dropped) and forgets a channel on the server's unsolicited `sunsubscribe`
//! after a slot migration, so it is never subscribed on the new owner
//! (shared/research/history-and-cluster.md §4.3). The same 1.8.1 takes that unsolicited
//! `sunsubscribe` as the reply to whatever request is in flight on the connection, and
//! every later reply shifts by one (tests/it/cluster.rs pins it): the push must mean
//! "reconnect this master", never be read beside a pending request.
//!
//! `CLUSTER SHARDS` only, no `CLUSTER SLOTS` fallback: both it and SSUBSCRIBE arrived in
//! Redis 7.0, so a server without it has no sharded pub/sub to offer either.
//!
//! - `slot`    a name's slot (CRC16-XMODEM with the hash-tag rule)
//! - `shards`  the `CLUSTER SHARDS` reply, RESP2 or RESP3, read into masters
//! - `fetch`   ask the seeds in turn for a complete topology
//! - `group`   channels by master, then by slot (one pipelined SSUBSCRIBE per channel)
//! - `seeds`   the `redis+cluster://h:p,h:p` URL form into one connection info per seed
//!
//! No I/O here but `fetch`.

mod fetch;
mod group;
mod seeds;
mod shards;
mod slot;

use std::ops::RangeInclusive;

use redis::{ConnectionAddr, ConnectionInfo, Value};

pub use fetch::{fetch, FetchError};
pub use group::{group, Groups};
pub use seeds::{is_cluster_url, seeds, SeedError};
pub use shards::ParseError;
pub use slot::{slot, SLOTS};

/// redis-rs's cluster connection through `seeds`, for commands (it routes each by its
/// key and follows MOVED itself; subscribing is `shards`' own business). `connect` bounds
/// each connect, `response` each reply.
pub async fn command_connection(
    seeds: &[ConnectionInfo],
    connect: std::time::Duration,
    response: std::time::Duration,
) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    let client = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(connect)
        .response_timeout(response)
        .build()?;
    client.get_async_connection().await
}

/// A master that owns slots, as `CLUSTER SHARDS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// The node id (40 hex characters), stable across restarts and address changes.
    pub id: String,
    /// Where to connect: the node's preferred endpoint (what MOVED names), else its IP.
    pub host: String,
    /// The node's IP as the cluster bus knows it.
    pub ip: String,
    /// Plaintext port; `None` when the node listens only with TLS.
    pub port: Option<u16>,
    pub tls_port: Option<u16>,
    /// The node answering marks this one failed (`health fail`): its slots are not served
    /// until a replica is promoted.
    pub failed: bool,
    /// Never empty; disjoint from every other master's.
    pub slots: Vec<RangeInclusive<u16>>,
}

impl Master {
    /// `seed` with this master's address: its TLS mode, certificates, credentials and
    /// protocol carried over. TLS uses the `tls-port` when Redis reports one.
    pub fn connection_info(&self, seed: &ConnectionInfo) -> ConnectionInfo {
        let plain = self.port.or(self.tls_port).unwrap_or_default();
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.tls_port.unwrap_or(plain),
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(self.host.clone(), plain),
        };
        seed.clone().set_addr(addr)
    }

    /// `host:port` for messages (the TLS port when there is no other).
    pub fn addr(&self) -> String {
        let port = self.port.or(self.tls_port).unwrap_or_default();
        format!("{}:{port}", self.host)
    }
}

/// Marks a slot no master owns in `Topology::owners`.
const UNOWNED: u16 = u16::MAX;

/// The cluster's masters and which of them owns each slot, as one node saw it.
#[derive(Debug, Clone)]
pub struct Topology {
    masters: Vec<Master>,
    /// Slot -> index into `masters`, or `UNOWNED`; `SLOTS` entries.
    owners: Vec<u16>,
}

impl Topology {
    /// From a `CLUSTER SHARDS` reply (RESP2 or RESP3).
    pub fn from_shards(reply: &Value) -> Result<Topology, ParseError> {
        Ok(Topology::from_masters(shards::parse(reply)?))
    }

    /// Indexes `masters`; a slot claimed twice goes to the later claim (one node's
    /// reply never claims a slot twice: each slot has one owner in its table).
    pub fn from_masters(masters: Vec<Master>) -> Topology {
        let mut owners = vec![UNOWNED; usize::from(SLOTS)];
        for (index, master) in masters.iter().enumerate() {
            for range in &master.slots {
                for slot in range.clone() {
                    owners[usize::from(slot)] = index as u16;
                }
            }
        }
        Topology { masters, owners }
    }

    /// The masters owning slots, in the order the reply listed them.
    pub fn masters(&self) -> &[Master] {
        &self.masters
    }

    /// The index in `masters()` of the master owning `slot`.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owners.get(usize::from(slot)) {
            Some(&index) if index != UNOWNED => Some(usize::from(index)),
            _ => None,
        }
    }

    /// The master owning the slot of a channel or key.
    pub fn master_of(&self, name: impl AsRef<[u8]>) -> Option<&Master> {
        self.owner(slot(name)).map(|index| &self.masters[index])
    }

    /// Slot ranges no master owns.
    pub fn gaps(&self) -> Vec<RangeInclusive<u16>> {
        let mut gaps: Vec<RangeInclusive<u16>> = Vec::new();
        for slot in (0..SLOTS).filter(|&s| self.owner(s).is_none()) {
            match gaps.last_mut() {
                Some(last) if *last.end() + 1 == slot => *last = *last.start()..=slot,
                _ => gaps.push(slot..=slot),
            }
        }
        gaps
    }

    /// What keeps this topology from serving every slot (slots without a master, masters
    /// marked failed), or `None` when it is complete.
    pub fn incomplete(&self) -> Option<String> {
        let mut problems = Vec::new();
        let gaps = self.gaps();
        if !gaps.is_empty() {
            let listed: Vec<String> = gaps.iter().map(show).collect();
            problems.push(format!("no master owns slots {}", listed.join(",")));
        }
        for master in self.masters.iter().filter(|m| m.failed) {
            problems.push(format!(
                "master {} ({}) is marked failed",
                master.addr(),
                master.id
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

fn show(range: &RangeInclusive<u16>) -> String {
    if range.start() == range.end() {
        range.start().to_string()
    } else {
        format!("{}-{}", range.start(), range.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn master(id: &str, port: u16, slots: &[RangeInclusive<u16>]) -> Master {
        Master {
            id: id.into(),
            host: "127.0.0.1".into(),
            ip: "127.0.0.1".into(),
            port: Some(port),
            tls_port: None,
            failed: false,
            slots: slots.to_vec(),
        }
    }

    #[test]
    fn every_slot_finds_its_master() {
        let topology = Topology::from_masters(vec![
            master("a", 1, &[0..=99, 101..=5460]),
            master("b", 2, &[100..=100, 5461..=10922]),
            master("c", 3, &[10923..=16383]),
        ]);
        assert_eq!(topology.incomplete(), None);
        assert_eq!(topology.owner(0), Some(0));
        assert_eq!(topology.owner(100), Some(1));
        assert_eq!(topology.owner(5460), Some(0));
        assert_eq!(topology.owner(16383), Some(2));
        assert_eq!(topology.owner(16384), None);
        assert_eq!(topology.master_of("foo").unwrap().id, "c"); // slot 12182
        assert_eq!(topology.master_of("bar").unwrap().id, "a"); // slot 5061
    }

    #[test]
    fn says_which_slots_are_missing_and_which_masters_failed() {
        let mut failed = master("b", 2, &[5461..=10922]);
        failed.failed = true;
        let topology = Topology::from_masters(vec![master("a", 1, &[0..=99, 101..=5460]), failed]);
        assert_eq!(topology.gaps(), vec![100..=100, 10923..=16383]);
        assert_eq!(
            topology.incomplete().unwrap(),
            "no master owns slots 100,10923-16383; master 127.0.0.1:2 (b) is marked failed"
        );
        assert_eq!(Topology::from_masters(vec![]).gaps(), vec![0..=16383]);
    }

    #[test]
    fn a_master_is_reached_like_the_seed() {
        let tls: ConnectionInfo = "rediss://user:pw@seed:7000/#insecure".parse().unwrap();
        let mut m = master("a", 7001, &[0..=1]);
        m.host = "10.0.0.9".into();
        m.tls_port = Some(8001);
        let info = m.connection_info(&tls);
        match info.addr() {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => assert_eq!((host.as_str(), *port, *insecure), ("10.0.0.9", 8001, true)),
            other => panic!("not TLS: {other:?}"),
        }
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().password(), Some("pw"));

        let plain: ConnectionInfo = "redis://seed:7000".parse().unwrap();
        assert_eq!(
            m.connection_info(&plain).addr(),
            &ConnectionAddr::Tcp("10.0.0.9".into(), 7001)
        );
    }
}
