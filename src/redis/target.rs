//! Where Herald's Redis is: `HERALD_REDIS_URL` read once into a target (no I/O here).
//!
//! - `redis://`, `rediss://`: one node, dialled as written (redis-rs reads the URL).
//! - `redis+sentinel://[user:pass@]host:port[,host:port...]/<master-name>`, and
//!   `rediss+sentinel://` for TLS to the sentinels and the data nodes alike: the master is
//!   asked of the sentinels at every connect (`locate`), since redis-rs re-dials a fixed
//!   address and follows no failover (research notes 4.4, redis-rs#1438).
//!
//! The URL's user and password are for the master (and replicas), never sent to a
//! sentinel: on Debian's redis 7.0 a sentinel without `requirepass` answers AUTH with an
//! error, and sentinels are commonly left without a password while the data nodes have one.
//! - `redis+cluster://[user:pass@]host:port[,host:port...]`, and `rediss+cluster://`: the
//!   seed nodes of a Redis Cluster (`topology::seeds` reads them; `shards` subscribes).

/// The sentinel port when a host names none (Redis's own default for sentinels).
const SENTINEL_PORT: u16 = 26379;

/// The schemes HERALD_REDIS_URL takes, for error messages.
const SCHEMES: &str = "redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or \
                       rediss+cluster";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One node at a fixed address: the URL as the user wrote it.
    Single(String),
    Sentinel(Sentinels),
    /// A Redis Cluster's seed nodes: the URL as written (checked by `topology::seeds`).
    Cluster(String),
}

/// A master known by name to a set of sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// `rediss+sentinel`: TLS to sentinels and data nodes.
    pub tls: bool,
    /// `user:pass@` exactly as written (percent-encoded), or empty; data nodes only.
    userinfo: String,
    /// Asked in this order; at least one.
    pub addrs: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master: String,
}

impl Target {
    /// Reads the URL; the error says what is wrong and names the variable.
    pub fn parse(raw: &str) -> Result<Target, String> {
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(format!(
                "HERALD_REDIS_URL is not a URL (write e.g. redis://host:6379 or \
                 redis+sentinel://host:26379/mymaster): {raw:?}"
            ));
        };
        match scheme {
            "redis" | "rediss" => match url::Url::parse(raw) {
                Ok(_) => Ok(Target::Single(raw.to_owned())),
                Err(e) => Err(format!("HERALD_REDIS_URL is not a URL: {e}")),
            },
            "redis+sentinel" => Sentinels::parse(rest, false).map(Target::Sentinel),
            "rediss+sentinel" => Sentinels::parse(rest, true).map(Target::Sentinel),
            "redis+cluster" | "rediss+cluster" => match super::topology::seeds(raw) {
                Ok(_) => Ok(Target::Cluster(raw.to_owned())),
                Err(e) => Err(format!("HERALD_REDIS_URL: {e}")),
            },
            other => Err(format!(
                "HERALD_REDIS_URL scheme must be {SCHEMES}, not {other}"
            )),
        }
    }

    /// The URL with any password replaced, fit for logs.
    pub fn masked(raw: &str) -> String {
        match Target::parse(raw) {
            Ok(Target::Single(url)) => match url::Url::parse(&url) {
                Ok(mut url) if url.password().is_some() => {
                    let _ = url.set_password(Some("***"));
                    url.to_string()
                }
                Ok(url) => url.to_string(),
                Err(_) => "<unparsable>".into(),
            },
            Ok(Target::Sentinel(s)) => {
                let scheme = if s.tls { "rediss" } else { "redis" };
                let user = match s.userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@"),
                    None => s.userinfo.clone(),
                };
                let hosts: Vec<String> = s.addrs.iter().map(|(h, p)| host_port(h, *p)).collect();
                format!("{scheme}+sentinel://{user}{}/{}", hosts.join(","), s.master)
            }
            Ok(Target::Cluster(url)) => {
                let (scheme, rest) = url.split_once("://").unwrap_or_default();
                match rest.rsplit_once('@') {
                    Some((user, hosts)) => {
                        let user = user.split_once(':').map_or(user, |(user, _)| user);
                        format!("{scheme}://{user}:***@{hosts}")
                    }
                    None => url,
                }
            }
            Err(_) => "<unparsable>".into(),
        }
    }

    /// A Cluster's seed nodes; `None` for the other targets.
    pub fn seeds(&self) -> Option<Vec<redis::ConnectionInfo>> {
        match self {
            Target::Cluster(url) => super::topology::seeds(url).ok(),
            _ => None,
        }
    }
}

impl Sentinels {
    fn parse(rest: &str, tls: bool) -> Result<Sentinels, String> {
        let shape = "write redis+sentinel://[user:pass@]host:port[,host:port...]/<master-name>";
        let (authority, master) = rest.split_once('/').unwrap_or((rest, ""));
        let master = master.strip_suffix('/').unwrap_or(master);
        if master.is_empty() {
            return Err(format!(
                "HERALD_REDIS_URL names no master: {shape} (the name the sentinels \
                 monitor, e.g. mymaster)"
            ));
        }
        if master.contains(['/', '?', '#', ' ']) {
            return Err(format!(
                "HERALD_REDIS_URL: {master:?} is not a master name: {shape}"
            ));
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
            None => (String::new(), authority),
        };
        let addrs = hosts
            .split(',')
            .map(|host| parse_host(host).map_err(|e| format!("HERALD_REDIS_URL: {e}: {shape}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sentinels {
            tls,
            userinfo,
            addrs,
            master: master.to_owned(),
        })
    }

    /// The URL of a sentinel: no credentials (see the module comment).
    pub fn sentinel_url(&self, (host, port): &(String, u16)) -> String {
        format!("{}://{}/", self.scheme(), host_port(host, *port))
    }

    /// The URL of a data node the sentinels named, with the URL's credentials.
    pub fn node_url(&self, host: &str, port: u16) -> String {
        format!(
            "{}://{}{}/",
            self.scheme(),
            self.userinfo,
            host_port(host, port)
        )
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "rediss"
        } else {
            "redis"
        }
    }
}

/// `host:port`, `host` (the default sentinel port) or `[v6]:port`.
fn parse_host(raw: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = raw.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{raw:?} lacks its closing ]"))?;
        (host, after.strip_prefix(':'))
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    if host.is_empty() {
        return Err(format!("a sentinel address without a host ({raw:?})"));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{raw:?} has no valid port"))?,
    };
    Ok((host.to_owned(), port))
}

/// `host:port`, bracketing an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinels(raw: &str) -> Sentinels {
        match Target::parse(raw) {
            Ok(Target::Sentinel(s)) => s,
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn single_node_urls_are_kept_as_written() {
        let url = "rediss://:pw@example:6380/2";
        assert_eq!(Target::parse(url), Ok(Target::Single(url.into())));
    }

    #[test]
    fn sentinel_urls_name_hosts_and_the_master() {
        let s = sentinels("redis+sentinel://u:p%40ss@a:26380,b,[::1]:5/mymaster");
        assert!(!s.tls);
        assert_eq!(
            s.addrs,
            [
                ("a".to_owned(), 26380),
                ("b".to_owned(), SENTINEL_PORT),
                ("::1".to_owned(), 5)
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.sentinel_url(&s.addrs[0]), "redis://a:26380/");
        assert_eq!(
            s.node_url("10.0.0.1", 6379),
            "redis://u:p%40ss@10.0.0.1:6379/"
        );
        assert_eq!(s.node_url("::1", 6379), "redis://u:p%40ss@[::1]:6379/");
        assert!(sentinels("rediss+sentinel://h:1/m/").tls);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let no_master = Target::parse("redis+sentinel://a:26379").unwrap_err();
        assert!(no_master.contains("names no master"), "{no_master}");
        assert!(Target::parse("redis+sentinel://a:26379/").is_err());
        let port = Target::parse("redis+sentinel://a:x/m").unwrap_err();
        assert!(port.contains("no valid port"), "{port}");
        assert!(Target::parse("redis+sentinel://a:1,,b:2/m").is_err());
        assert!(Target::parse("redis+sentinel://a:1/m/0").is_err());
        let cluster = Target::parse("redis+cluster://a:1,:2").unwrap_err();
        assert!(cluster.contains("has no host"), "{cluster}");
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("localhost:6379").is_err());
    }

    #[test]
    fn passwords_are_masked() {
        let shown = Target::masked("redis+sentinel://u:hunter2@a:1,b:2/m");
        assert_eq!(shown, "redis+sentinel://u:***@a:1,b:2/m");
        assert!(!Target::masked("redis://:hunter2@a:1/").contains("hunter2"));
        let shown = Target::masked("rediss+cluster://u:hunter2@a:1,b:2");
        assert_eq!(shown, "rediss+cluster://u:***@a:1,b:2");
    }
}
