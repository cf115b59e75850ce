//! Ask the seeds, one after another, for the cluster's shards; the first complete answer wins.
//!
//! In turn, not all at once: the first healthy seed usually answers, and a fan-out to every
//! seed on each refresh would multiply the load of a reconnect storm by the seed count.

use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionInfo};

use super::Topology;

/// No seed gave a complete topology; what each said, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// `(seed address, what went wrong)`; empty when there were no seeds.
    pub tried: Vec<(String, String)>,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tried.is_empty() {
            return write!(f, "no cluster seeds to ask");
        }
        write!(f, "no seed gave a complete cluster topology")?;
        for (seed, why) in &self.tried {
            write!(f, "; {seed}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FetchError {}

/// `CLUSTER SHARDS` from each seed in turn, each within `timeout` (connect and reply), until
/// one describes every slot served by a master not marked failed.
pub async fn fetch(seeds: &[ConnectionInfo], timeout: Duration) -> Result<Topology, FetchError> {
    let mut tried = Vec::new();
    for seed in seeds {
        let outcome = match tokio::time::timeout(timeout, ask(seed, timeout)).await {
            Ok(Ok(topology)) => match topology.incomplete() {
                None => return Ok(topology),
                Some(missing) => missing,
            },
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {timeout:?}"),
        };
        tried.push((seed.addr().to_string(), outcome));
    }
    Err(FetchError { tried })
}

async fn ask(seed: &ConnectionInfo, timeout: Duration) -> Result<Topology, String> {
    let client = redis::Client::open(seed.clone()).map_err(|e| format!("bad seed: {e}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let reply: redis::Value = redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("CLUSTER SHARDS: {e}"))?;
    Topology::from_shards(&reply).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that accepts and never answers stands for a wedged node; a closed port
    /// for a dead one. Both are reported, in order, and nothing waits past the timeout.
    #[tokio::test]
    async fn every_seed_that_failed_is_named_with_its_reason() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let closed_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let seeds: Vec<ConnectionInfo> = [silent_port, closed_port]
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}").parse().unwrap())
            .collect();
        let started = std::time::Instant::now();
        let err = fetch(&seeds, Duration::from_millis(300)).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.tried.len(), 2, "{err}");
        assert!(err.tried[0].0.contains(&silent_port.to_string()), "{err}");
        assert!(err.tried[1].1.starts_with("connect"), "{err}");
        assert_eq!(
            fetch(&[], Duration::from_secs(1))
                .await
                .unwrap_err()
                .to_string(),
            "no cluster seeds to ask"
        );
    }
}
