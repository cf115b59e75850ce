//! The cluster URL form: `redis+cluster://[user:pass@]h:p[,h:p...][/...][?...]`, and
//! `rediss+cluster://` for TLS, into one `ConnectionInfo` per seed.
//!
//! Each seed is parsed by redis-rs as `redis[s]://[user:pass@]h:p<rest>`, so credentials,
//! TLS (`#insecure`) and query options mean what they mean in Herald's single-node URL.

use redis::{ConnectionInfo, IntoConnectionInfo};

/// Why a cluster URL was refused; names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedError {
    /// Not `redis+cluster://` or `rediss+cluster://`.
    Scheme,
    /// No `host:port` at all.
    Empty,
    /// An entry without a host (e.g. `:7000`, or `a:1,,b:2`).
    NoHost(String),
    /// A port that is not a number in 1..=65535.
    BadPort(String),
    /// redis-rs refused the seed's URL.
    Invalid(String, String),
}

impl std::fmt::Display for SeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedError::Scheme => write!(
                f,
                "a cluster URL starts with redis+cluster:// or rediss+cluster://"
            ),
            SeedError::Empty => write!(f, "a cluster URL needs at least one host:port"),
            SeedError::NoHost(entry) => write!(f, "seed {entry:?} has no host"),
            SeedError::BadPort(entry) => write!(f, "seed {entry:?} has no valid port (1-65535)"),
            SeedError::Invalid(entry, why) => write!(f, "seed {entry:?}: {why}"),
        }
    }
}

impl std::error::Error for SeedError {}

/// Whether `url` names a Redis Cluster (its scheme; the rest is checked by `seeds`).
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://")
}

/// The seeds of a cluster URL, in the order written.
pub fn seeds(url: &str) -> Result<Vec<ConnectionInfo>, SeedError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Err(SeedError::Scheme);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // Reserved characters in a password are percent-encoded, so the last `@` ends it.
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    if hosts.is_empty() {
        return Err(SeedError::Empty);
    }
    hosts
        .split(',')
        .map(|entry| {
            check(entry)?;
            format!("{scheme}://{user}{entry}{tail}")
                .into_connection_info()
                .map_err(|e| SeedError::Invalid(entry.to_string(), e.to_string()))
        })
        .collect()
}

/// `host[:port]` or `[v6][:port]`: a host, and a port when one is written.
fn check(entry: &str) -> Result<(), SeedError> {
    let (host, port) = match entry.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err(SeedError::NoHost(entry.to_string())),
        },
        None => match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        },
    };
    if host.is_empty() {
        return Err(SeedError::NoHost(entry.to_string()));
    }
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err(SeedError::BadPort(entry.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use redis::ConnectionAddr;

    use super::*;

    #[test]
    fn every_seed_carries_the_credentials_and_tls() {
        let seeds = seeds(
            "rediss+cluster://app:s%40cret@a.example:7000,10.0.0.2:7001,[::1]:7002/#insecure",
        )
        .unwrap();
        assert_eq!(seeds.len(), 3);
        let hosts: Vec<(String, u16, bool)> = seeds
            .iter()
            .map(|s| match s.addr() {
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure,
                    ..
                } => (host.clone(), *port, *insecure),
                other => panic!("not TLS: {other:?}"),
            })
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("a.example".into(), 7000, true),
                ("10.0.0.2".into(), 7001, true),
                ("::1".into(), 7002, true)
            ]
        );
        for seed in &seeds {
            assert_eq!(seed.redis_settings().username(), Some("app"));
            assert_eq!(seed.redis_settings().password(), Some("s@cret"));
        }
    }

    #[test]
    fn plain_seeds_and_the_default_port() {
        let seeds = seeds("redis+cluster://127.0.0.1:7000,redis-1").unwrap();
        assert_eq!(
            seeds[0].addr(),
            &ConnectionAddr::Tcp("127.0.0.1".into(), 7000)
        );
        assert_eq!(
            seeds[1].addr(),
            &ConnectionAddr::Tcp("redis-1".into(), 6379)
        );
        assert_eq!(seeds[0].redis_settings().password(), None);
    }

    #[test]
    fn bad_forms_are_refused_with_the_part_at_fault() {
        let cases = [
            ("redis://127.0.0.1:7000", SeedError::Scheme),
            ("redis+cluster://", SeedError::Empty),
            ("redis+cluster://user:pw@", SeedError::Empty),
            ("redis+cluster:///0", SeedError::Empty),
            ("redis+cluster://:7000", SeedError::NoHost(":7000".into())),
            ("redis+cluster://a:1,,b:2", SeedError::NoHost("".into())),
            ("redis+cluster://a:1,", SeedError::NoHost("".into())),
            (
                "redis+cluster://a:port",
                SeedError::BadPort("a:port".into()),
            ),
            ("redis+cluster://a:", SeedError::BadPort("a:".into())),
            ("redis+cluster://a:0", SeedError::BadPort("a:0".into())),
            (
                "redis+cluster://a:65536",
                SeedError::BadPort("a:65536".into()),
            ),
            ("redis+cluster://[::1", SeedError::NoHost("[::1".into())),
        ];
        for (url, expected) in cases {
            assert_eq!(seeds(url).unwrap_err(), expected, "{url}");
        }
    }
}
